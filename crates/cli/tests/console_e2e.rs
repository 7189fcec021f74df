//! The web console in a real browser (Debian's Chromium, headless, driven by Playwright from
//! `crates/console/tests/browser`) against a node with real microVMs: sign-in with keys made by
//! `ignition key create`, a deploy from the form, an invocation from the form with its result
//! and log, the recent list, the chart, the followed log, the operator's pool page, the node
//! unreachable and back, a function deleted elsewhere, sign-out and a closed session. A function
//! prints an HTML tag; it must show as text. Screenshots of each page at 1280x800 are written to
//! `target/console-screenshots/`.

// Real microVMs, root and QEMU: run by scripts/test.sh, which turns the feature on.
#![cfg(feature = "vm-tests")]
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::io::Write;
use std::process::Command;

use common::TestServer;

fn zip_of(files: &[(&str, &str)]) -> Vec<u8> {
    let mut w = zip::ZipWriter::new(std::io::Cursor::new(Vec::new()));
    for (name, text) in files {
        w.start_file(*name, zip::write::SimpleFileOptions::default())
            .unwrap();
        w.write_all(text.as_bytes()).unwrap();
    }
    w.finish().unwrap().into_inner()
}

#[test]
fn the_console_in_a_browser_signs_in_deploys_invokes_and_shows_it() {
    let browser_dir = common::repo_root().join("crates/console/tests/browser");
    assert!(
        browser_dir.join("node_modules/playwright-core").is_dir(),
        "playwright-core is not installed: ./scripts/setup.sh runs npm ci in {}",
        browser_dir.display()
    );
    let server = TestServer::start_secure(&[]);
    let (id, secret) = server.create_key("acme");
    let (op_id, op_secret) = server.create_operator_key();
    let work = tempfile::tempdir().unwrap();
    let code = work.path().join("hello.zip");
    std::fs::write(
        &code,
        zip_of(&[(
            "handler.py",
            "import os\n\
             def handler(event, context):\n    \
                 print('<img src=x onerror=alert(1)>')\n    \
                 return {'message': os.environ['GREETING'] + ', ' + event.get('name', 'world')}\n",
        )]),
    )
    .unwrap();
    let shots = common::repo_root().join("target/console-screenshots");
    let _ = std::fs::remove_dir_all(&shots);
    let out = Command::new("node")
        .arg("console.test.mjs")
        .current_dir(&browser_dir)
        .env("IGNITION_URL", &server.url)
        .env("TENANT", "acme")
        .env("TENANT_KEY_ID", &id)
        .env("TENANT_SECRET", &secret)
        .env("OPERATOR_KEY_ID", &op_id)
        .env("OPERATOR_SECRET", &op_secret)
        .env("CODE_ZIP", &code)
        .env("SERVER_PID", server.pid().to_string())
        .env("SCREENSHOTS", &shots)
        .output()
        .expect("node (./scripts/setup.sh installs Node.js)");
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "the browser test failed:\n{stdout}\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(stdout.lines().any(|l| l == "ok"), "{stdout}");
    for page in [
        "01-sign-in",
        "02-sign-in-refused",
        "03-deploy-refused",
        "04-function",
        "04-function-activity",
        "04-function-logs",
        "05-functions",
        "06-node",
        "07-unreachable",
        "08-not-found",
    ] {
        let png = std::fs::read(shots.join(format!("{page}.png"))).unwrap();
        assert_eq!(&png[..8], b"\x89PNG\r\n\x1a\n", "{page} is a PNG");
        // IHDR: width and height, big-endian, at bytes 16..24.
        let w = u32::from_be_bytes(png[16..20].try_into().unwrap());
        let h = u32::from_be_bytes(png[20..24].try_into().unwrap());
        assert_eq!((w, h), (1280, 800), "{page}");
    }
}
