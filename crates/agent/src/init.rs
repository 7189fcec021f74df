//! Guest preparation: mounts, modules, the root switch, loopback.

use std::ffi::CString;
use std::fs;
use std::io::Write;
use std::path::Path;
use std::time::{Duration, Instant};

use nix::mount::{mount, MsFlags};
use nix::unistd::{chdir, chroot};

use crate::channel::Channel;

/// What a prepared guest hands to the session.
#[derive(Debug)]
pub struct Guest {
    pub(crate) channel: Channel,
    pub(crate) kernel_release: String,
    pub(crate) network: crate::network::NetState,
}

/// Writes one line to the console (the host captures it into the VM's log).
pub fn console(msg: &str) {
    let mut out = std::io::stdout().lock();
    let _ = writeln!(out, "ignition-agent: {msg}");
    let _ = out.flush();
}

/// Reports a fatal error on the console and powers the VM off. Never returns.
pub fn die(err: &str) -> ! {
    console(&format!("fatal: {err}"));
    power_off()
}

pub fn power_off() -> ! {
    nix::unistd::sync();
    // With QEMU's -no-reboot a reboot request ends the VMM process, which is what the host waits
    // for; RB_POWER_OFF needs ACPI power-off support that the microvm machine may lack.
    let _ = nix::sys::reboot::reboot(nix::sys::reboot::RebootMode::RB_AUTOBOOT);
    loop {
        std::thread::sleep(Duration::from_secs(60));
    }
}

pub(crate) fn mount_fs(
    src: &str,
    target: &str,
    fstype: &str,
    flags: MsFlags,
    data: Option<&str>,
) -> Result<(), String> {
    fs::create_dir_all(target).map_err(|e| format!("mkdir {target}: {e}"))?;
    mount(Some(src), target, Some(fstype), flags, data)
        .map_err(|e| format!("mount {fstype} on {target}: {e}"))
}

/// Loads the kernel modules the image builder listed, in order.
pub fn load_modules() -> Result<(), String> {
    // The image builder writes the modules in dependency order, one file name a line.
    let order =
        fs::read_to_string("/lib/modules/order").map_err(|e| format!("module list: {e}"))?;
    for name in order.lines().filter(|l| !l.trim().is_empty()) {
        let path = format!("/lib/modules/{name}");
        let file = fs::File::open(&path).map_err(|e| format!("open {path}: {e}"))?;
        let params = CString::default();
        match nix::kmod::finit_module(&file, &params, nix::kmod::ModuleInitFlags::empty()) {
            Ok(()) | Err(nix::errno::Errno::EEXIST) => {}
            Err(e) => return Err(format!("load module {name}: {e}")),
        }
    }
    Ok(())
}

fn wait_for(path: &str, limit: Duration) -> Result<(), String> {
    let start = Instant::now();
    while !Path::new(path).exists() {
        if start.elapsed() > limit {
            return Err(format!("{path} did not appear within {limit:?}"));
        }
        std::thread::sleep(Duration::from_millis(5));
    }
    Ok(())
}

/// Reads the kernel command line option `ignition.NAME=VALUE`.
pub(crate) fn cmdline_option(name: &str) -> Option<String> {
    let cmdline = fs::read_to_string("/proc/cmdline").ok()?;
    let key = format!("ignition.{name}=");
    cmdline
        .split_whitespace()
        .find_map(|w| w.strip_prefix(&key).map(str::to_owned))
}

/// Mounts the read-only root with a tmpfs upper layer at /newroot and makes it `/`.
fn switch_root(scratch_mib: u64) -> Result<(), String> {
    let ro = MsFlags::MS_RDONLY | MsFlags::MS_NODEV;
    mount_fs("/dev/vda", "/lower", "ext4", ro, Some("noload"))?;
    let size = format!("size={scratch_mib}m,mode=0755");
    mount_fs("tmpfs", "/upper", "tmpfs", MsFlags::MS_NODEV, Some(&size))?;
    for d in ["/upper/data", "/upper/work"] {
        fs::create_dir_all(d).map_err(|e| format!("mkdir {d}: {e}"))?;
    }
    mount_fs(
        "overlay",
        "/newroot",
        "overlay",
        MsFlags::MS_NODEV,
        Some("lowerdir=/lower,upperdir=/upper/data,workdir=/upper/work"),
    )?;
    chdir("/newroot").map_err(|e| format!("chdir /newroot: {e}"))?;
    mount(Some("."), "/", None::<&str>, MsFlags::MS_MOVE, None::<&str>)
        .map_err(|e| format!("move root: {e}"))?;
    chroot(".").map_err(|e| format!("chroot: {e}"))?;
    chdir("/").map_err(|e| format!("chdir /: {e}"))?;
    Ok(())
}

fn bring_up_loopback() -> Result<(), String> {
    // SAFETY: socket(2) with constant, valid arguments; the result is checked below.
    let fd = unsafe { libc::socket(libc::AF_INET, libc::SOCK_DGRAM | libc::SOCK_CLOEXEC, 0) };
    if fd < 0 {
        return Err(format!("socket: {}", std::io::Error::last_os_error()));
    }
    // SAFETY: ifreq is plain old data; all-zero is a valid value.
    let mut req: libc::ifreq = unsafe { std::mem::zeroed() };
    for (dst, src) in req.ifr_name.iter_mut().zip(b"lo\0") {
        *dst = *src as libc::c_char;
    }
    req.ifr_ifru.ifru_flags = (libc::IFF_UP | libc::IFF_RUNNING) as libc::c_short;
    // SAFETY: fd is a valid socket we own, req is a valid ifreq naming "lo"; SIOCSIFFLAGS only
    // reads it.
    let rc = unsafe { libc::ioctl(fd, libc::SIOCSIFFLAGS, &req) };
    let err = std::io::Error::last_os_error();
    // SAFETY: fd is ours and closed exactly once.
    unsafe { libc::close(fd) };
    if rc < 0 {
        return Err(format!("bring up lo: {err}"));
    }
    Ok(())
}

/// /dev, /proc and /sys: once in the initramfs, once more in the new root after the switch.
pub fn mount_kernel_filesystems() -> Result<(), String> {
    let hardened = MsFlags::MS_NOSUID | MsFlags::MS_NODEV;
    mount_fs("devtmpfs", "/dev", "devtmpfs", MsFlags::MS_NOSUID, None)?;
    mount_fs("proc", "/proc", "proc", hardened, None)?;
    mount_fs("sysfs", "/sys", "sysfs", hardened, None)
}

/// Everything between the kernel starting us and the first frame to the host.
pub fn prepare_guest() -> Result<Guest, String> {
    mount_kernel_filesystems()?;
    load_modules()?;
    let scratch_mib = cmdline_option("scratch_mib")
        .and_then(|v| v.parse().ok())
        .unwrap_or(64);
    wait_for("/dev/vda", Duration::from_secs(10))?;
    // The channel is opened before the root switch: its device node lives in this /dev.
    let channel = Channel::open(Duration::from_secs(10))?;
    switch_root(scratch_mib)?;
    mount_kernel_filesystems()?;
    bring_up_loopback()?;
    let network = crate::network::configure_at_boot(cmdline_option("net").as_deref())?;
    let kernel_release = nix::sys::utsname::uname()
        .map(|u| u.release().to_string_lossy().into_owned())
        .map_err(|e| format!("uname: {e}"))?;
    let runtime_dir = crate::supervisor::RUNTIME_DIR;
    fs::create_dir_all(runtime_dir).map_err(|e| format!("mkdir {runtime_dir}: {e}"))?;
    for (name, text) in [
        (crate::supervisor::PYTHON_BOOTSTRAP, crate::PYTHON_RUNTIME),
        (crate::supervisor::NODE_BOOTSTRAP, crate::NODE_RUNTIME),
    ] {
        fs::write(format!("{runtime_dir}/{name}"), text)
            .map_err(|e| format!("write {runtime_dir}/{name}: {e}"))?;
    }
    Ok(Guest {
        channel,
        kernel_release,
        network,
    })
}
