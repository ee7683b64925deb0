use std::os::unix::fs::PermissionsExt as _;

use super::*;

const SECOND: u64 = 1_000_000_000;
const T0: u64 = 1_800_000_000 * SECOND;

fn temp_dir(name: &str) -> PathBuf {
    let dir = std::env::temp_dir().join(format!("vigil-spool-{}-{name}", std::process::id()));
    let _ = fs::remove_dir_all(&dir);
    dir
}

fn limits(max_bytes: u64) -> SpoolLimits {
    SpoolLimits { max_bytes, max_age: Duration::from_hours(1) }
}

/// Replays everything, `batch` at a time, acknowledging all: the ids in order.
fn drain(spool: &mut Spool, batch: usize, now_ns: u64) -> Vec<(Class, String)> {
    let mut out = Vec::new();
    loop {
        let (class, records) = spool.front(batch, now_ns).unwrap();
        if records.is_empty() {
            return out;
        }
        out.extend(records.iter().map(|r| (class, r.id.clone())));
        spool.commit(records.len());
    }
}

/// A frame's size on disk for `id` and `payload`.
fn frame(id: &str, payload: &[u8]) -> u64 {
    (HEADER + BODY_FIXED + id.len() + payload.len()) as u64
}

#[test]
fn records_come_back_in_order_alerts_first_and_survive_a_reopen() {
    let dir = temp_dir("order");
    {
        let mut spool = Spool::open(&dir, limits(1 << 20)).unwrap();
        spool.push(Class::Flow, "f1", b"flow one", T0).unwrap();
        spool.push(Class::Alert, "a1", b"alert one", T0 + 1).unwrap();
        spool.push(Class::Flow, "f2", b"flow two", T0 + 2).unwrap();
        spool.push(Class::Alert, "a2", "alert ü".as_bytes(), T0 + 3).unwrap();
        assert_eq!((spool.pending(Class::Alert), spool.pending(Class::Flow)), (2, 2));
        let stats = spool.counters().snapshot();
        assert_eq!((stats.alerts.spooled, stats.flows.spooled), (2, 2));
        assert_eq!(
            stats.bytes,
            frame("f1", b"flow one") * 2 + frame("a1", b"alert one") * 2 - 1,
            "\"alert ü\" is a byte shorter"
        );
    }
    let mut spool = Spool::open(&dir, limits(1 << 20)).unwrap();
    assert_eq!(spool.counters().snapshot().alerts.pending, 2, "what a run left is pending after a restart");
    let (class, first) = spool.front(10, T0 + 4).unwrap();
    assert_eq!(class, Class::Alert);
    assert_eq!(first[1], Record { time_ns: T0 + 3, id: "a2".into(), payload: "alert ü".as_bytes().to_vec() });
    let ids = drain(&mut spool, 1, T0 + 4);
    assert_eq!(
        ids,
        [(Class::Alert, "a1"), (Class::Alert, "a2"), (Class::Flow, "f1"), (Class::Flow, "f2")]
            .map(|(c, id)| (c, id.to_owned()))
    );
    let stats = spool.counters().snapshot();
    assert_eq!((stats.alerts.replayed, stats.flows.replayed, stats.bytes), (2, 2, 0));
    assert!(spool.is_empty());
    let left: Vec<_> =
        fs::read_dir(dir.join("alerts")).unwrap().chain(fs::read_dir(dir.join("flows")).unwrap()).collect();
    assert!(left.is_empty(), "replayed segments are deleted: {left:?}");
    fs::remove_dir_all(&dir).unwrap();
}

#[test]
fn a_record_not_acknowledged_is_offered_again() {
    let dir = temp_dir("retry");
    let mut spool = Spool::open(&dir, limits(1 << 20)).unwrap();
    for n in 0..5 {
        spool.push(Class::Alert, &format!("a{n}"), b"x", T0).unwrap();
    }
    let (_, records) = spool.front(3, T0).unwrap();
    assert_eq!(records.len(), 3);
    spool.commit(1);
    let (_, again) = spool.front(3, T0).unwrap();
    assert_eq!(again.iter().map(|r| r.id.as_str()).collect::<Vec<_>>(), ["a1", "a2", "a3"]);
    assert_eq!(
        spool.counters().snapshot().alerts,
        ClassStats { spooled: 5, replayed: 1, pending: 4, ..ClassStats::default() }
    );
    fs::remove_dir_all(&dir).unwrap();
}

#[test]
fn flows_make_room_oldest_first_and_alerts_are_refused_only_at_the_cap() {
    let dir = temp_dir("cap");
    let payload = [7u8; 200];
    let size = frame("f000", &payload);
    // 4 KiB segments (the smallest): 19 frames each.
    let cap = 64 << 10;
    let mut spool = Spool::open(&dir, limits(cap)).unwrap();
    let mut n = 0;
    while spool.counters().snapshot().bytes + size <= cap {
        spool.push(Class::Flow, &format!("f{n:03}"), &payload, T0).unwrap();
        n += 1;
    }
    assert_eq!(spool.counters().snapshot().flows.dropped, 0, "nothing dropped before the cap");
    // The spool is full of flows: an alert evicts the oldest flow segment.
    spool.push(Class::Alert, "a000", &payload, T0).unwrap();
    let stats = spool.counters().snapshot();
    assert!(stats.flows.dropped > 0 && stats.flows.dropped <= 19, "{stats:?}");
    assert_eq!(stats.flows.pending + stats.flows.dropped, n);
    assert!(stats.bytes <= cap);
    // Alerts keep coming: every flow goes, then alerts are refused, never dropped for flows.
    let mut alerts = 1;
    loop {
        match spool.push(Class::Alert, &format!("a{alerts:03}"), &payload, T0) {
            Ok(()) => alerts += 1,
            Err(PushError::Full { max_bytes }) => {
                assert_eq!(max_bytes, cap);
                break;
            }
            Err(e) => panic!("{e}"),
        }
    }
    let stats = spool.counters().snapshot();
    assert_eq!((stats.flows.pending, stats.flows.dropped), (0, n), "{stats:?}");
    assert_eq!((stats.alerts.pending, stats.alerts.dropped), (alerts, 1));
    assert!(stats.bytes <= cap && stats.bytes + size > cap, "{stats:?}");
    // A flow is refused too: it may not evict an alert.
    assert!(matches!(spool.push(Class::Flow, "late", &payload, T0), Err(PushError::Full { .. })));
    let ids = drain(&mut spool, 7, T0);
    assert_eq!(ids.len() as u64, alerts);
    assert!(ids.iter().all(|(c, _)| *c == Class::Alert));
    assert_eq!(ids.first().unwrap().1, "a000", "the oldest alert survives");
    fs::remove_dir_all(&dir).unwrap();
}

#[test]
fn the_oldest_flows_are_the_ones_evicted() {
    let dir = temp_dir("oldest");
    let payload = [1u8; 500];
    let mut spool = Spool::open(&dir, limits(64 << 10)).unwrap();
    for n in 0..400 {
        spool.push(Class::Flow, &format!("f{n:03}"), &payload, T0).unwrap();
    }
    let stats = spool.counters().snapshot();
    assert!(stats.flows.dropped > 0);
    assert_eq!(stats.flows.spooled, 400);
    let ids = drain(&mut spool, 50, T0);
    let first: usize = ids[0].1[1..].parse().unwrap();
    assert_eq!(first as u64, stats.flows.dropped, "the survivors are the newest");
    assert_eq!(ids.last().unwrap().1, "f399");
    fs::remove_dir_all(&dir).unwrap();
}

#[test]
fn records_older_than_max_age_expire() {
    let dir = temp_dir("age");
    let mut spool = Spool::open(&dir, SpoolLimits { max_bytes: 1 << 20, max_age: Duration::from_mins(1) }).unwrap();
    spool.push(Class::Alert, "old", b"x", T0).unwrap();
    spool.push(Class::Alert, "new", b"x", T0 + 50 * SECOND).unwrap();
    let ids = drain(&mut spool, 10, T0 + 90 * SECOND);
    assert_eq!(ids, [(Class::Alert, "new".to_owned())]);
    let stats = spool.counters().snapshot().alerts;
    assert_eq!((stats.expired, stats.replayed, stats.pending), (1, 1, 0));

    // Whole sealed segments expire when room is made.
    for n in 0..100 {
        spool.push(Class::Flow, &format!("f{n}"), &[0; 100], T0).unwrap();
    }
    let _ = spool.front(1, T0).unwrap(); // seals the open segment
    spool.push(Class::Alert, "later", b"x", T0 + 3600 * SECOND).unwrap();
    let stats = spool.counters().snapshot();
    assert_eq!((stats.flows.expired, stats.flows.pending), (100, 0), "{stats:?}");
    fs::remove_dir_all(&dir).unwrap();
}

#[test]
fn a_torn_tail_is_counted_and_what_precedes_it_replayed() {
    let dir = temp_dir("torn");
    {
        let mut spool = Spool::open(&dir, limits(1 << 20)).unwrap();
        for n in 0..3 {
            spool.push(Class::Alert, &format!("a{n}"), b"payload", T0).unwrap();
        }
    }
    let segment = fs::read_dir(dir.join("alerts")).unwrap().next().unwrap().unwrap().path();
    let mut data = fs::read(&segment).unwrap();
    let len = data.len();
    data[len - 3] ^= 0xff; // the last frame's payload
    data.extend_from_slice(&[9, 0, 0]); // and a torn frame after it
    fs::write(&segment, data).unwrap();
    let mut spool = Spool::open(&dir, limits(1 << 20)).unwrap();
    assert_eq!(spool.counters().snapshot().corrupt, 1);
    let ids: Vec<String> = drain(&mut spool, 10, T0).into_iter().map(|(_, id)| id).collect();
    assert_eq!(ids, ["a0", "a1"]);
    assert!(spool.is_empty());
    fs::remove_dir_all(&dir).unwrap();
}

#[test]
fn the_directory_is_private_and_used_by_one_spool_at_a_time() {
    let dir = temp_dir("lock");
    let mut spool = Spool::open(&dir, limits(1 << 20)).unwrap();
    spool.push(Class::Alert, "a", b"secret alert", T0).unwrap();
    let segment = fs::read_dir(dir.join("alerts")).unwrap().next().unwrap().unwrap().path();
    assert_eq!(fs::metadata(&segment).unwrap().permissions().mode() & 0o777, 0o600);
    assert_eq!(fs::metadata(&dir).unwrap().permissions().mode() & 0o777, 0o700);
    let second = Spool::open(&dir, limits(1 << 20)).err().expect("a second spool on the same directory is refused");
    assert!(second.to_string().contains("in use"), "{second}");
    drop(spool);
    assert!(Spool::open(&dir, limits(1 << 20)).is_ok(), "the lock goes with the spool");
    fs::remove_dir_all(&dir).unwrap();
}

#[test]
fn an_oversized_record_is_refused_and_counted() {
    let dir = temp_dir("large");
    let mut spool = Spool::open(&dir, limits(1 << 20)).unwrap();
    let error = spool.push(Class::Flow, "big", &vec![0; MAX_BODY], T0).unwrap_err();
    assert!(matches!(error, PushError::TooLarge(_)), "{error}");
    assert_eq!(spool.counters().snapshot().flows.dropped, 1);
    fs::remove_dir_all(&dir).unwrap();
}
