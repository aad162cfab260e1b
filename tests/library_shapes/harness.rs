//! Running calls under `catch_unwind`: the panic hook that collects each panic with where it
//! was raised, and the `Sweep` that keeps every panic with its call.

use crate::budget::{crate_frame, reporting};
use std::cell::{Cell, RefCell};
use std::panic::{catch_unwind, AssertUnwindSafe};

thread_local! {
    /// Whether this thread's panics are being collected (otherwise the default hook prints them).
    static COLLECTING: Cell<bool> = const { Cell::new(false) };
    /// The last collected panic: its message and where it was raised.
    static LAST_PANIC: RefCell<Option<String>> = const { RefCell::new(None) };
}

/// Installs, once per process, a panic hook that records collected panics instead of printing.
pub(crate) fn install_hook() {
    static ONCE: std::sync::Once = std::sync::Once::new();
    ONCE.call_once(|| {
        let default = std::panic::take_hook();
        std::panic::set_hook(Box::new(move |info| {
            if !COLLECTING.get() {
                return default(info);
            }
            let payload = info.payload();
            let message = payload
                .downcast_ref::<&str>()
                .map(|s| s.to_string())
                .or_else(|| payload.downcast_ref::<String>().cloned())
                .unwrap_or_else(|| "(a payload that is not text)".into());
            let place = info.location().map_or("an unknown location".into(), |l| {
                format!("{}:{}", l.file(), l.line())
            });
            let origin = match place.starts_with("src/") {
                true => String::new(),
                false => format!(" (called from {})", reporting(crate_frame)),
            };
            LAST_PANIC.set(Some(format!("`{message}` at {place}{origin}")));
        }));
    });
}

/// Runs calls under `catch_unwind` and keeps every panic with its call.
#[derive(Default)]
pub(crate) struct Sweep {
    pub(crate) calls: usize,
    pub(crate) errors: usize,
    pub(crate) panics: Vec<String>,
}

impl Sweep {
    /// Runs `f`: its Ok value, None after an Err or a panic. `call` describes it (made only
    /// for the report of a panic).
    pub(crate) fn call<T, E>(
        &mut self,
        call: impl FnOnce() -> String,
        f: impl FnOnce() -> Result<T, E>,
    ) -> Option<T> {
        self.calls += 1;
        match collected(f) {
            Ok(Ok(value)) => Some(value),
            Ok(Err(_)) => {
                self.errors += 1;
                None
            }
            Err(panic) => {
                self.panics.push(format!("{}: panicked: {panic}", call()));
                None
            }
        }
    }

    /// As `call`, for entry points that return a value rather than a Result.
    pub(crate) fn value<T>(
        &mut self,
        call: impl FnOnce() -> String,
        f: impl FnOnce() -> T,
    ) -> Option<T> {
        self.call(call, || Ok::<T, std::convert::Infallible>(f()))
    }
}

/// `f`'s result, or its panic as text (a collected panic's message never reaches stderr).
pub(crate) fn collected<T>(f: impl FnOnce() -> T) -> Result<T, String> {
    COLLECTING.set(true);
    let outcome = catch_unwind(AssertUnwindSafe(f));
    COLLECTING.set(false);
    outcome.map_err(|_| {
        LAST_PANIC
            .take()
            .unwrap_or_else(|| "a panic on another thread".into())
    })
}
