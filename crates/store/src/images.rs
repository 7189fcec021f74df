//! Which container images the stored functions use: what the node needs to fetch an image's
//! filesystem again when its cache let it go.

use crate::sql::vals;
use crate::{Store, StoreError};

impl Store {
    /// The pinned reference (`REPOSITORY@sha256:...`) of the image with manifest `digest`
    /// (`sha256:<hex>`) that a function or one of its versions uses: `Some("")` when only an
    /// uploaded archive had it (no registry to fetch it from), `None` when nothing uses it.
    pub fn image_source(&self, digest: &str) -> Result<Option<String>, StoreError> {
        // The digest is hex behind `sha256:`: nothing else in the JSON can contain it.
        let (latest, versions) = self.with(|db| {
            let latest = db.query(
                "SELECT image FROM functions WHERE image IS NOT NULL AND image LIKE '%' || $1 || '%'",
                &vals![digest],
            )?;
            let versions = db.query(
                "SELECT config FROM versions WHERE config LIKE '%' || $1 || '%'",
                &vals![digest],
            )?;
            Ok((latest, versions))
        })?;
        let mut images = Vec::new();
        for r in &latest {
            images.push(r.text(0)?);
        }
        for r in &versions {
            // A version's configuration holds its image under `image`.
            let config: serde_json::Value = serde_json::from_str(&r.text(0)?)
                .map_err(|_| StoreError::Corrupt("a version's configuration".into()))?;
            if let Some(image) = config.get("image").filter(|i| !i.is_null()) {
                images.push(image.to_string());
            }
        }
        let mut found = None;
        for json in images {
            let Ok(image) = serde_json::from_str::<ignition_types::FunctionImage>(&json) else {
                continue;
            };
            if image.digest != digest {
                continue;
            }
            if !image.resolved_uri.is_empty() {
                return Ok(Some(image.resolved_uri));
            }
            found = Some(String::new());
        }
        Ok(found)
    }
}

#[cfg(test)]
mod tests {
    use crate::FunctionConfig;

    #[test]
    fn an_image_in_use_is_found_by_its_digest() {
        for (_, s) in crate::testing::stores() {
            let digest = format!("sha256:{}", "d".repeat(64));
            assert_eq!(s.image_source(&digest).unwrap(), None);
            let image = ignition_types::FunctionImage {
                uri: "r:5000/x:1".into(),
                resolved_uri: format!("r:5000/x@{digest}"),
                digest: digest.clone(),
                run: Default::default(),
                overrides: Default::default(),
            };
            let c = FunctionConfig {
                name: "f".into(),
                runtime: ignition_types::Runtime::Provided,
                runtime_name: String::new(),
                handler: String::new(),
                memory_mib: 128,
                timeout_s: 3,
                env: Default::default(),
                reuse: false,
                egress: Vec::new(),
                description: String::new(),
                layers: Vec::new(),
                image: Some(image.clone()),
            };
            s.put_function(&c, b"").unwrap();
            s.publish_version("f", None).unwrap();
            assert_eq!(
                s.image_source(&digest).unwrap(),
                Some(format!("r:5000/x@{digest}"))
            );
            // The function moves on; its version still holds the image.
            let other = format!("sha256:{}", "e".repeat(64));
            let moved = ignition_types::FunctionImage {
                digest: other,
                ..image
            };
            s.put_function(
                &FunctionConfig {
                    image: Some(moved),
                    ..c
                },
                b"",
            )
            .unwrap();
            assert_eq!(
                s.image_source(&digest).unwrap(),
                Some(format!("r:5000/x@{digest}"))
            );
        }
    }
}
