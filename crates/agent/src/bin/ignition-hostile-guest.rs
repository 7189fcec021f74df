//! A deliberately hostile guest, for tests only: it replaces the agent as PID 1, comes up like
//! the agent does, says `Ready`, and then misbehaves in the way the function's handler names.
//! The host must survive every one of them: destroy the VM, fail the invocation clearly, carry on.
//!
//! | handler | what it does |
//! | --- | --- |
//! | `garbage` | answers `LoadFunction` with bytes that are not a frame |
//! | `oversize` | announces a 4 GiB frame |
//! | `bad-body` | a valid header around a body that is not a message |
//! | `flood` | loads, then answers `Invoke` with an endless stream of valid but unexpected frames |
//! | `wrong-id` | loads, then answers for another request id |
//! | `huge-result` | loads, then returns a result larger than the API allows |
//! | `silent` | loads, then never answers |
//! | `stall` | loads, then sends half a header and stops |
//! | `exit` | loads, then PID 1 exits (the kernel panics) |
//! | `console-flood` | floods the console while answering correctly |

#[cfg(target_os = "linux")]
fn idle() -> ! {
    loop {
        std::thread::sleep(std::time::Duration::from_secs(3600));
    }
}

#[cfg(target_os = "linux")]
fn main() {
    use std::io::Write;
    use std::time::Duration;

    use ignition_agent::channel::Channel;
    use ignition_agent::init;
    use ignition_proto::{encode, GuestMessage, HostMessage, InvokeResult, Outcome};

    let mut chan = match init::mount_kernel_filesystems()
        .and_then(|()| init::load_modules())
        .and_then(|()| Channel::open(Duration::from_secs(10)))
    {
        Ok(c) => c,
        Err(e) => init::die(&e),
    };
    let ready = GuestMessage::Ready {
        agent_version: "hostile".into(),
        kernel_release: "hostile".into(),
    };
    let _ = chan.send(&ready);
    let mode = match chan.recv() {
        Ok(Some(HostMessage::LoadFunction(spec))) => spec.handler,
        _ => init::die("hostile guest: expected LoadFunction"),
    };
    match mode.as_str() {
        "garbage" => {
            let _ = chan.write_raw(&[0x5a; 65536]);
            idle()
        }
        "oversize" => {
            let _ = chan.write_raw(&[
                b'I',
                b'G',
                ignition_proto::VERSION,
                0,
                0xff,
                0xff,
                0xff,
                0xf0,
            ]);
            idle()
        }
        "bad-body" => {
            let _ = chan.write_raw(&[
                b'I',
                b'G',
                ignition_proto::VERSION,
                0,
                0,
                0,
                0,
                4,
                0xff,
                0xff,
                0xff,
                0xff,
            ]);
            idle()
        }
        _ => {}
    }
    if mode == "console-flood" {
        std::thread::spawn(|| {
            let line = "hostile guest flooding the console ".repeat(30);
            loop {
                let _ = writeln!(std::io::stdout(), "{line}");
            }
        });
    }
    let _ = chan.send(&GuestMessage::Loaded);
    let request_id = match chan.recv() {
        Ok(Some(HostMessage::Invoke(req))) => req.request_id,
        _ => idle(),
    };
    let result = |id: String, body: Vec<u8>| {
        GuestMessage::Result(InvokeResult {
            request_id: id,
            outcome: Outcome::Success(body),
            logs: Vec::new(),
            logs_truncated: false,
            duration_ms: 1,
            network_us: 0,
        })
    };
    match mode.as_str() {
        "flood" => {
            let frame = encode(&GuestMessage::Warmed).unwrap_or_default();
            let burst: Vec<u8> = frame
                .iter()
                .copied()
                .cycle()
                .take(frame.len() * 4096)
                .collect();
            while chan.write_raw(&burst).is_ok() {}
            idle()
        }
        "wrong-id" => {
            let _ = chan.send(&result("not-the-request-in-flight".into(), b"1".to_vec()));
            idle()
        }
        "huge-result" => {
            let _ = chan.send(&result(request_id, vec![b'7'; 7 * 1024 * 1024]));
            idle()
        }
        "silent" => idle(),
        "stall" => {
            let _ = chan.write_raw(&[b'I', b'G', ignition_proto::VERSION]);
            idle()
        }
        "exit" => std::process::exit(1),
        _ => {
            let _ = chan.send(&result(request_id, b"\"survived\"".to_vec()));
            idle()
        }
    }
}

#[cfg(not(target_os = "linux"))]
fn main() {}
