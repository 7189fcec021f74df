//! Writing an OCI image layout: what `skopeo copy oci:DIR` reads and what an OCI archive
//! holds. Ignition reads images and does not build them for users; this writer exists so that
//! an image can be made from files on the host alone (its tests make theirs with it, since no
//! image may be pulled from outside).

use std::io::Write;
use std::path::Path;

use serde_json::json;

use crate::{sha256_hex, ImageError};

/// Writes at `dir` an image layout holding one `linux/`-`architecture` image of `layers`
/// (uncompressed tars, bottom first, stored gzip-compressed) with `config`'s process settings
/// (the image configuration's `config` object: `Entrypoint`, `Cmd`, `Env`, `WorkingDir`,
/// `User`), tagged `tag`. Returns the manifest's digest.
pub fn write(
    dir: &Path,
    layers: &[Vec<u8>],
    config: &serde_json::Value,
    architecture: &str,
    tag: &str,
) -> Result<String, ImageError> {
    let blobs = dir.join("blobs/sha256");
    std::fs::create_dir_all(&blobs)
        .map_err(ImageError::io(format!("mkdir {}", blobs.display())))?;
    let put = |bytes: &[u8]| -> Result<(String, usize), ImageError> {
        let h = sha256_hex(bytes);
        std::fs::write(blobs.join(&h), bytes).map_err(ImageError::io("write a blob"))?;
        Ok((format!("sha256:{h}"), bytes.len()))
    };
    let mut descriptors = Vec::new();
    let mut diff_ids = Vec::new();
    for tar in layers {
        diff_ids.push(format!("sha256:{}", sha256_hex(tar)));
        let mut z = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
        z.write_all(tar)
            .map_err(ImageError::io("compress a layer"))?;
        let gz = z.finish().map_err(ImageError::io("compress a layer"))?;
        let (digest, size) = put(&gz)?;
        descriptors.push(json!({
            "mediaType": "application/vnd.oci.image.layer.v1.tar+gzip",
            "digest": digest, "size": size
        }));
    }
    let image_config = json!({
        "architecture": architecture, "os": "linux", "config": config,
        "rootfs": {"type": "layers", "diff_ids": diff_ids}
    });
    let bytes = |v: &serde_json::Value| {
        serde_json::to_vec(v).map_err(|e| ImageError::Malformed(format!("a layout document: {e}")))
    };
    let (config_digest, config_size) = put(&bytes(&image_config)?)?;
    let manifest = json!({
        "schemaVersion": 2, "mediaType": "application/vnd.oci.image.manifest.v1+json",
        "config": {"mediaType": "application/vnd.oci.image.config.v1+json",
                   "digest": config_digest, "size": config_size},
        "layers": descriptors
    });
    let (digest, size) = put(&bytes(&manifest)?)?;
    let index = json!({
        "schemaVersion": 2,
        "manifests": [{
            "mediaType": "application/vnd.oci.image.manifest.v1+json", "digest": digest, "size": size,
            "platform": {"architecture": architecture, "os": "linux"},
            "annotations": {"org.opencontainers.image.ref.name": tag}
        }]
    });
    std::fs::write(dir.join("index.json"), bytes(&index)?)
        .map_err(ImageError::io("write index.json"))?;
    std::fs::write(dir.join("oci-layout"), br#"{"imageLayoutVersion":"1.0.0"}"#)
        .map_err(ImageError::io("write oci-layout"))?;
    Ok(digest)
}

/// Packs the layout at `dir` into the archive `out` (an OCI archive, as `--image-archive`
/// takes it).
pub fn archive(dir: &Path, out: &Path) -> Result<(), ImageError> {
    let file =
        std::fs::File::create(out).map_err(ImageError::io(format!("create {}", out.display())))?;
    let mut b = tar::Builder::new(file);
    b.append_dir_all(".", dir)
        .map_err(ImageError::io("pack the layout"))?;
    b.into_inner()
        .and_then(|mut f| f.flush())
        .map_err(ImageError::io("pack the layout"))
}
