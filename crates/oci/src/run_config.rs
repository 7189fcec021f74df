//! How an image runs: the parts of its configuration a VM needs.

use ignition_types::ImageRunConfig;

use crate::ImageError;

/// Reads an image configuration blob (`application/vnd.oci.image.config.v1+json` or
/// Docker's), refusing one for another platform than `linux/amd64`.
pub fn run_config(reference: &str, blob: &[u8]) -> Result<ImageRunConfig, ImageError> {
    {
        let image: oci_spec::image::ImageConfiguration =
            serde_json::from_slice(blob).map_err(|e| {
                ImageError::Malformed(format!("image configuration of {reference}: {e}"))
            })?;
        let (os, arch) = (image.os().to_string(), image.architecture().to_string());
        if os != "linux" || arch != "amd64" {
            return Err(ImageError::NoPlatform {
                reference: reference.to_owned(),
                detail: format!(": it is for {os}/{arch}"),
            });
        }
        let Some(c) = image.config() else {
            return Ok(ImageRunConfig::default());
        };
        Ok(ImageRunConfig {
            entrypoint: c.entrypoint().clone().unwrap_or_default(),
            cmd: c.cmd().clone().unwrap_or_default(),
            env: c.env().clone().unwrap_or_default(),
            working_dir: c.working_dir().clone().unwrap_or_default(),
            user: c.user().clone().unwrap_or_default(),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_image_configuration_gives_its_process_settings() {
        let blob =
            br#"{"architecture":"amd64","os":"linux","rootfs":{"type":"layers","diff_ids":[]},
            "config":{"Entrypoint":["/bin/run"],"Cmd":["app.handler"],"Env":["PATH=/bin","A=b"],
            "WorkingDir":"/var/task","User":"1000:1000"}}"#;
        let c = run_config("x", blob).unwrap();
        assert_eq!(c.entrypoint, ["/bin/run"]);
        assert_eq!(c.cmd, ["app.handler"]);
        assert_eq!(c.env, ["PATH=/bin", "A=b"]);
        assert_eq!(c.working_dir, "/var/task");
        assert_eq!(c.user, "1000:1000");
    }

    #[test]
    fn an_image_for_another_platform_is_refused() {
        let blob =
            br#"{"architecture":"arm64","os":"linux","rootfs":{"type":"layers","diff_ids":[]}}"#;
        let e = run_config("x", blob).unwrap_err();
        assert!(matches!(e, ImageError::NoPlatform { .. }), "{e}");
        assert!(e.to_string().contains("linux/arm64"), "{e}");
        assert!(run_config("x", b"{").is_err());
    }
}
