//! The uncompressed ELF kernel (`vmlinux`) Firecracker boots, extracted from the same Debian
//! `bzImage` the QEMU driver boots, so both drivers run one kernel.
//!
//! A `bzImage` carries its compressed kernel as a payload the x86 boot protocol locates
//! (`payload_offset` and `payload_length` in the setup header, protocol 2.08+); Debian's kernels
//! compress it with LZ4 (the kernel's legacy LZ4 framing) or gzip.

use std::fs;
use std::io::Read;
use std::path::{Path, PathBuf};

use crate::ImageError;

const LZ4_LEGACY_MAGIC: u32 = 0x184C_2102;
/// The legacy LZ4 format's block size: no block expands beyond it.
const LZ4_LEGACY_BLOCK: usize = 8 << 20;
/// A kernel larger than this is not a kernel.
const MAX_VMLINUX: usize = 512 << 20;

fn bad(what: impl Into<String>) -> ImageError {
    ImageError::Missing(format!("cannot extract vmlinux: {}", what.into()))
}

fn u32_at(b: &[u8], at: usize) -> Option<u32> {
    Some(u32::from_le_bytes(b.get(at..at + 4)?.try_into().ok()?))
}

/// The compressed payload of a `bzImage`.
fn payload(bz: &[u8]) -> Result<&[u8], ImageError> {
    if bz.get(0x202..0x206) != Some(b"HdrS") {
        return Err(bad("not a bzImage (no HdrS)"));
    }
    let version = bz
        .get(0x206..0x208)
        .map(|v| u16::from_le_bytes([v[0], v[1]]))
        .unwrap_or(0);
    if version < 0x208 {
        return Err(bad(format!(
            "boot protocol {version:#x} has no payload fields"
        )));
    }
    let setup_sects = match bz.get(0x1f1) {
        Some(0) | None => 4,
        Some(n) => usize::from(*n),
    };
    let base = (setup_sects + 1) * 512;
    let (offset, length) = (
        u32_at(bz, 0x248).ok_or_else(|| bad("short header"))?,
        u32_at(bz, 0x24c).ok_or_else(|| bad("short header"))?,
    );
    let start = base + offset as usize;
    bz.get(start..start + length as usize)
        .ok_or_else(|| bad("payload outside the file"))
}

fn lz4_legacy(data: &[u8]) -> Result<Vec<u8>, ImageError> {
    let mut out = Vec::new();
    let mut block = vec![0u8; LZ4_LEGACY_BLOCK];
    let mut pos = 4;
    while let Some(size) = u32_at(data, pos) {
        if size == LZ4_LEGACY_MAGIC {
            pos += 4;
            continue;
        }
        let size = size as usize;
        // What follows the last block is the kernel build's appended length, not a block.
        let Some(input) = data.get(pos + 4..pos + 4 + size) else {
            break;
        };
        let n = lz4_flex::block::decompress_into(input, &mut block)
            .map_err(|e| bad(format!("LZ4 block at {pos}: {e}")))?;
        out.extend_from_slice(&block[..n]);
        if out.len() > MAX_VMLINUX {
            return Err(bad("kernel expands beyond 512 MiB"));
        }
        pos += 4 + size;
    }
    Ok(out)
}

/// Decompresses the kernel inside `bz`.
pub(crate) fn extract(bz: &[u8]) -> Result<Vec<u8>, ImageError> {
    let data = payload(bz)?;
    let elf = match data {
        [0x02, 0x21, 0x4c, 0x18, ..] => lz4_legacy(data)?,
        [0x1f, 0x8b, ..] => {
            let mut out = Vec::new();
            flate2::read::GzDecoder::new(data)
                .take(MAX_VMLINUX as u64 + 1)
                .read_to_end(&mut out)
                .map_err(|e| bad(format!("gzip: {e}")))?;
            out
        }
        _ => {
            return Err(bad(format!(
                "unsupported compression (payload starts {:02x?})",
                &data[..data.len().min(4)]
            )))
        }
    };
    if !elf.starts_with(b"\x7fELF") {
        return Err(bad("the payload is not an ELF image"));
    }
    Ok(elf)
}

/// `vmlinux` next to `vmlinuz`, extracted once.
pub(crate) fn ensure(vmlinuz: &Path) -> Result<PathBuf, ImageError> {
    let dir = vmlinuz.parent().unwrap_or(Path::new("."));
    let out = dir.join("vmlinux");
    if out.exists() {
        return Ok(out);
    }
    let bz = fs::read(vmlinuz).map_err(ImageError::io(format!("read {}", vmlinuz.display())))?;
    let elf = extract(&bz)?;
    let tmp = dir.join(format!(".vmlinux.{}", std::process::id()));
    fs::write(&tmp, elf).map_err(ImageError::io(format!("write {}", tmp.display())))?;
    fs::rename(&tmp, &out).map_err(ImageError::io(format!("rename to {}", out.display())))?;
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn garbage_is_refused_with_a_reason() {
        assert!(extract(b"not a kernel")
            .unwrap_err()
            .to_string()
            .contains("HdrS"));
        let mut bz = vec![0u8; 4096];
        bz[0x202..0x206].copy_from_slice(b"HdrS");
        bz[0x206..0x208].copy_from_slice(&0x20fu16.to_le_bytes());
        bz[0x1f1] = 1;
        bz[0x248..0x24c].copy_from_slice(&0u32.to_le_bytes());
        bz[0x24c..0x250].copy_from_slice(&16u32.to_le_bytes());
        assert!(extract(&bz)
            .unwrap_err()
            .to_string()
            .contains("unsupported compression"));
        bz[0x24c..0x250].copy_from_slice(&100_000u32.to_le_bytes());
        assert!(extract(&bz)
            .unwrap_err()
            .to_string()
            .contains("outside the file"));
    }

    #[test]
    fn the_cached_debian_kernel_yields_an_elf_vmlinux() {
        // Needs the guest image (./scripts/setup.sh builds it).
        let image = crate::load_current(&crate::default_cache_dir())
            .expect("a guest image in the cache (run ./scripts/setup.sh)");
        let bz = fs::read(&image.kernel).unwrap();
        let elf = extract(&bz).unwrap();
        assert!(elf.starts_with(b"\x7fELF\x02"), "a 64-bit ELF");
        assert!(elf.len() > bz.len(), "uncompressed is larger");
        // The release string the guest reports is inside the kernel.
        let release = image.kernel_release.as_bytes();
        assert!(elf.windows(release.len()).any(|w| w == release));
    }
}
