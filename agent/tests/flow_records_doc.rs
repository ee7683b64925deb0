//! `docs/flow-records.md` shows one record of each format: both must be what the code reads
//! and writes, so the page cannot drift from the format.

use std::path::Path;

use vigil::flows::{
    EndReason, FlowRecord,
    biflow::{BiflowRecord, ConnState, RECORD_VERSION},
};

/// The JSON examples of the page, in order.
fn examples() -> Vec<String> {
    let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("../docs/flow-records.md");
    let text = std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    let mut out = Vec::new();
    let mut block: Option<String> = None;
    for line in text.lines() {
        match (&mut block, line) {
            (None, "```json") => block = Some(String::new()),
            (Some(b), "```") => {
                out.push(std::mem::take(b));
                block = None;
            }
            (Some(b), l) => b.push_str(l),
            (None, _) => {}
        }
    }
    out
}

#[test]
fn the_conversation_example_is_a_format_2_record_that_round_trips() {
    let examples = examples();
    assert_eq!(examples.len(), 2, "one example per format");
    let record: BiflowRecord = serde_json::from_str(&examples[0]).expect("the first example is a conversation record");
    assert_eq!(
        (record.version, record.conn_state, record.end_reason),
        (RECORD_VERSION, ConnState::SF, EndReason::Idle)
    );
    let responder = record.responder.as_ref().expect("an answered conversation");
    assert_eq!(record.packets(), record.initiator.packets + responder.packets);
    let again = serde_json::to_string(&record).expect("serialises");
    assert_eq!(again, examples[0], "written exactly as the page shows it");
    assert_eq!(record.conversation().record(), record, "its directional records pair back into it");
}

#[test]
fn the_directional_example_is_a_format_1_record() {
    let record: FlowRecord = serde_json::from_str(&examples()[1]).expect("the second example is a directional record");
    assert_eq!((record.protocol, record.end_reason), (6, EndReason::Shutdown));
    assert!(serde_json::from_str::<BiflowRecord>(&examples()[1]).is_err(), "the formats cannot be confused");
}
