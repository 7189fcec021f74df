//! Whether an image's process can be started: its program looked up in the image's filesystem
//! image (with `debugfs`, which reads ext4 without mounting it), as `execvp` would look it up in
//! the VM: through `PATH` for a bare name, from the working directory for a relative one,
//! following symbolic links inside the image.

use std::path::{Path, PathBuf};
use std::process::Command;

use ignition_types::ImageProcess;

use crate::ImageError;

/// Symbolic links followed for one program, as Linux's limit.
const MAX_LINK_HOPS: usize = 40;
/// `PATH` when the image sets none (what the agent gives the process).
const DEFAULT_PATH: &str = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin";

/// What is at a path of the image.
#[derive(Debug, PartialEq, Eq)]
enum Node {
    Missing,
    File { mode: u32 },
    Link(String),
    Other,
}

/// Refuses `process` when the image at `image` (an ext4 filesystem image) has no executable
/// file for its program, or its `USER` names a user (or group) the image does not list.
pub fn check(image: &Path, process: &ImageProcess) -> Result<(), ImageError> {
    check_user(image, &process.user)?;
    let Some(program) = process.argv.first() else {
        return Err(ImageError::BadEntryPoint(
            "the image has neither ENTRYPOINT nor CMD, and ImageConfig sets neither".into(),
        ));
    };
    let path_env = process
        .env
        .iter()
        .find_map(|kv| kv.strip_prefix("PATH="))
        .unwrap_or(DEFAULT_PATH);
    let candidates: Vec<PathBuf> = if program.contains('/') {
        vec![Path::new(&process.working_dir).join(program)]
    } else {
        path_env
            .split(':')
            .filter(|d| d.starts_with('/'))
            .map(|d| Path::new(d).join(program))
            .collect()
    };
    let mut found_not_executable = None;
    for c in &candidates {
        match resolve(image, c)? {
            Some(Node::File { mode }) if mode & 0o111 != 0 => return Ok(()),
            Some(Node::File { mode }) => found_not_executable = Some((c.clone(), mode)),
            _ => {}
        }
    }
    Err(ImageError::BadEntryPoint(match found_not_executable {
        Some((path, mode)) => format!(
            "{program:?} is {} in the image, which is not executable (mode {mode:o})",
            path.display()
        ),
        None if program.contains('/') => format!("{program:?} is not a file in the image"),
        None => format!("{program:?} is not in the image's PATH ({path_env})"),
    }))
}

/// A `USER` by name (`name`, `name:group`, `uid:group`) must be in the image's `/etc/passwd`
/// (`/etc/group`); numeric ids need no entry.
fn check_user(image: &Path, user: &str) -> Result<(), ImageError> {
    let (u, g) = user.split_once(':').unwrap_or((user, ""));
    for (name, table) in [(u, "/etc/passwd"), (g, "/etc/group")] {
        if name.is_empty() || name.bytes().all(|b| b.is_ascii_digit()) {
            continue;
        }
        let text = String::from_utf8_lossy(&debugfs(image, &format!("cat \"{table}\""))?.stdout)
            .into_owned();
        if !text.lines().any(|l| l.split(':').next() == Some(name)) {
            return Err(ImageError::BadEntryPoint(format!(
                "USER {user:?}: {name:?} is not in the image's {table}"
            )));
        }
    }
    Ok(())
}

/// What `path` is once its links are followed; `None` when it cannot be looked up (a path
/// debugfs cannot be given), which is not a refusal.
fn resolve(image: &Path, path: &Path) -> Result<Option<Node>, ImageError> {
    let mut path = path.to_path_buf();
    for _ in 0..MAX_LINK_HOPS {
        let shown = path.to_string_lossy().into_owned();
        if shown.contains(['"', '\n', '\\']) {
            return Ok(None);
        }
        match stat(image, &shown)? {
            Node::Link(target) => {
                let parent = path.parent().unwrap_or(Path::new("/")).to_path_buf();
                let joined = if target.starts_with('/') {
                    target
                } else {
                    format!("{}/{target}", parent.display())
                };
                // Empty and `.` names dropped (debugfs takes neither); `..` kept for debugfs
                // to resolve, since the names before it may be links.
                let names: Vec<&str> = joined
                    .split('/')
                    .filter(|n| !n.is_empty() && *n != ".")
                    .collect();
                path = PathBuf::from(format!("/{}", names.join("/")));
            }
            node => return Ok(Some(node)),
        }
    }
    Ok(Some(Node::Other))
}

fn debugfs(image: &Path, request: &str) -> Result<std::process::Output, ImageError> {
    let binary = ["/usr/sbin/debugfs", "/sbin/debugfs"]
        .into_iter()
        .find(|p| Path::new(p).exists())
        .unwrap_or("debugfs");
    Command::new(binary)
        .arg("-R")
        .arg(request)
        .arg(image)
        .env("LC_ALL", "C")
        .output()
        .map_err(ImageError::io(format!("run {binary}")))
}

fn stat(image: &Path, path: &str) -> Result<Node, ImageError> {
    let out = debugfs(image, &format!("stat \"{path}\""))?;
    let text = String::from_utf8_lossy(&out.stdout);
    let Some(first) = text.lines().find(|l| l.contains("Type:")) else {
        return Ok(Node::Missing);
    };
    let field = |name: &str| {
        first
            .split(name)
            .nth(1)
            .and_then(|rest| rest.split_whitespace().next())
            .map(str::to_owned)
    };
    match field("Type:").as_deref() {
        Some("regular") => Ok(Node::File {
            mode: field("Mode:")
                .and_then(|m| u32::from_str_radix(&m, 8).ok())
                .unwrap_or(0),
        }),
        Some("symlink") => {
            let fast = text.lines().find_map(|l| {
                l.strip_prefix("Fast link dest: ")
                    .map(|d| d.trim().trim_matches('"').to_owned())
            });
            match fast {
                Some(d) => Ok(Node::Link(d)),
                // A long target is in the link's data block.
                None => {
                    let out = debugfs(image, &format!("cat \"{path}\""))?;
                    Ok(Node::Link(
                        String::from_utf8_lossy(&out.stdout).into_owned(),
                    ))
                }
            }
        }
        _ => Ok(Node::Other),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn process(argv: &[&str], env: &[&str], wd: &str) -> ImageProcess {
        ImageProcess {
            argv: argv.iter().map(|s| s.to_string()).collect(),
            env: env.iter().map(|s| s.to_string()).collect(),
            working_dir: wd.into(),
            user: String::new(),
        }
    }

    #[test]
    fn the_program_is_looked_up_as_exec_would_in_the_image() {
        let dir = tempfile::tempdir().unwrap();
        let tree = dir.path().join("tree");
        std::fs::create_dir_all(tree.join("usr/bin")).unwrap();
        std::fs::create_dir_all(tree.join("app")).unwrap();
        std::fs::write(tree.join("usr/bin/run"), "#!/bin/sh\n").unwrap();
        use std::os::unix::fs::PermissionsExt;
        std::fs::set_permissions(
            tree.join("usr/bin/run"),
            std::fs::Permissions::from_mode(0o755),
        )
        .unwrap();
        std::fs::write(tree.join("app/plain"), "x").unwrap();
        std::fs::set_permissions(
            tree.join("app/plain"),
            std::fs::Permissions::from_mode(0o644),
        )
        .unwrap();
        std::os::unix::fs::symlink("usr/bin", tree.join("bin")).unwrap();
        std::os::unix::fs::symlink("/usr/bin/run", tree.join("app/abs")).unwrap();
        std::os::unix::fs::symlink(
            format!("{}/../usr/bin/run", "./".repeat(30)),
            tree.join("app/long"),
        )
        .unwrap();
        std::os::unix::fs::symlink("loop", tree.join("app/loop")).unwrap();
        let image = dir.path().join("i.img");
        ignition_image::ext4::make(&tree, &image, "t").unwrap();

        for ok in [
            ImageProcess {
                user: "1000:1000".into(),
                ..process(&["/usr/bin/run"], &[], "/")
            },
            process(&["/usr/bin/run"], &[], "/"),
            process(&["/bin/run"], &[], "/"),
            process(&["run"], &["PATH=/bin"], "/"),
            process(&["run"], &[], "/"),
            process(&["./abs"], &[], "/app"),
            process(&["/app/long", "x"], &[], "/"),
        ] {
            check(&image, &ok).unwrap_or_else(|e| panic!("{ok:?}: {e}"));
        }
        for (bad, why) in [
            (process(&[], &[], "/"), "neither ENTRYPOINT nor CMD"),
            (process(&["/app/plain"], &[], "/"), "not executable"),
            (process(&["plain"], &["PATH=/app"], "/"), "not executable"),
            (process(&["/nope"], &[], "/"), "not a file"),
            (process(&["nope"], &[], "/"), "PATH"),
            (process(&["/app/loop"], &[], "/"), "not a file"),
            (process(&["/app"], &[], "/"), "not a file"),
            (
                ImageProcess {
                    user: "nobody".into(),
                    ..process(&["/bin/run"], &[], "/")
                },
                "USER",
            ),
        ] {
            let e = check(&image, &bad).unwrap_err().to_string();
            assert!(e.contains(why), "{bad:?}: {e}");
        }
    }
}
