//! Readiness for a service manager: under systemd (`Type=notify`, `NOTIFY_SOCKET` set) the
//! server says `READY=1` once its API answers and `STOPPING=1` when it begins to shut down.
//! Without `NOTIFY_SOCKET` these do nothing.

pub(crate) fn notify_ready() {
    notify(&[sd_notify::NotifyState::Ready]);
}

pub(crate) fn notify_stopping() {
    notify(&[sd_notify::NotifyState::Stopping]);
}

fn notify(state: &[sd_notify::NotifyState<'_>]) {
    if let Err(e) = sd_notify::notify(false, state) {
        tracing::warn!(error = %e, "could not notify the service manager");
    }
}
