//! Ctrl-C for the lab tools: SIGINT and SIGTERM set a flag that every wait checks, so the
//! tools unwind normally and everything they built is removed by `Drop`.
//!
//! Child processes are started in their own process groups (see [`own_group`]): the terminal's
//! SIGINT reaches the tool alone, which then stops its children in order (the agent first, so
//! it detaches its program before the namespaces go).

use std::{
    os::unix::process::CommandExt as _,
    process::{Child, Command, ExitStatus},
    sync::atomic::{AtomicBool, Ordering},
    thread,
    time::{Duration, Instant},
};

use nix::sys::signal::{SaFlags, SigAction, SigHandler, SigSet, Signal, sigaction};

static STOP: AtomicBool = AtomicBool::new(false);

extern "C" fn on_signal(_: libc::c_int) {
    STOP.store(true, Ordering::SeqCst);
}

/// Installs the SIGINT and SIGTERM handlers.
///
/// # Panics
/// If the kernel refuses the handler.
pub fn install() {
    let action = SigAction::new(SigHandler::Handler(on_signal), SaFlags::SA_RESTART, SigSet::empty());
    for signal in [Signal::SIGINT, Signal::SIGTERM] {
        // SAFETY: the handler only stores to an atomic, which is async-signal-safe.
        unsafe { sigaction(signal, &action) }.expect("installing the signal handler");
    }
}

/// True once Ctrl-C (or SIGTERM) arrived.
pub fn requested() -> bool {
    STOP.load(Ordering::SeqCst)
}

/// Why a step stopped early.
#[derive(Debug)]
pub struct Interrupted;

impl std::fmt::Display for Interrupted {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("interrupted")
    }
}

impl std::error::Error for Interrupted {}

/// Sleeps `d`, waking early on Ctrl-C.
///
/// # Errors
/// [`Interrupted`] if Ctrl-C arrived.
pub fn sleep(d: Duration) -> Result<(), Interrupted> {
    let deadline = Instant::now() + d;
    while let Some(left) = deadline.checked_duration_since(Instant::now()) {
        if requested() {
            return Err(Interrupted);
        }
        thread::sleep(left.min(Duration::from_millis(50)));
    }
    if requested() { Err(Interrupted) } else { Ok(()) }
}

/// Puts `cmd` in a process group of its own, out of reach of the terminal's Ctrl-C.
pub fn own_group(cmd: &mut Command) -> &mut Command {
    cmd.process_group(0)
}

/// Waits for `child`, killing it on Ctrl-C or after `limit`.
///
/// # Errors
/// [`Interrupted`] if Ctrl-C arrived (the child is killed).
///
/// # Panics
/// If waiting fails.
pub fn wait(child: &mut Child, limit: Duration) -> Result<Option<ExitStatus>, Interrupted> {
    let deadline = Instant::now() + limit;
    loop {
        if let Some(status) = child.try_wait().expect("waiting for a child") {
            return Ok(Some(status));
        }
        if requested() {
            let _ = child.kill();
            let _ = child.wait();
            return Err(Interrupted);
        }
        if Instant::now() >= deadline {
            let _ = child.kill();
            let _ = child.wait();
            return Ok(None);
        }
        thread::sleep(Duration::from_millis(20));
    }
}
