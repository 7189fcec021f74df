//! Pulling images from registries with the OCI distribution API.
//!
//! HTTPS always, except for the registries the operator lists as insecure; anonymous access,
//! or HTTP basic credentials per registry, either of them turned into a bearer token where the
//! registry asks for one (the client does the token dance). The manifest is checked against
//! the digest the reference names (if it names one), each blob against its descriptor's, and an
//! index resolves to its `linux/amd64` entry. Every request has a deadline.

use std::collections::HashMap;
use std::path::Path;
use std::time::Duration;

use oci_client::client::{ClientConfig, ClientProtocol};
use oci_client::errors::OciDistributionError;
use oci_client::manifest::ImageIndexEntry;
use oci_client::manifest::{OciImageManifest, OciManifest};
use oci_client::secrets::RegistryAuth;
use oci_client::{Client, Reference};

use crate::{run_config, FetchedImage, ImageError};

/// A user name and password for a registry.
#[derive(Clone, PartialEq, Eq)]
pub struct Credentials {
    /// The user.
    pub username: String,
    /// The password or token.
    pub password: String,
}

impl std::fmt::Debug for Credentials {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Credentials")
            .field("username", &self.username)
            .finish_non_exhaustive()
    }
}

/// How the node talks to registries.
#[derive(Debug, Clone)]
pub struct RegistryOptions {
    /// `HOST[:PORT]`s reached over plain HTTP.
    pub insecure: Vec<String>,
    /// Credentials by `HOST[:PORT]`; anonymous elsewhere.
    pub credentials: HashMap<String, Credentials>,
    /// How long one pull may take in all, and any one request.
    pub timeout: Duration,
}

impl Default for RegistryOptions {
    fn default() -> Self {
        Self {
            insecure: Vec::new(),
            credentials: HashMap::new(),
            timeout: Duration::from_secs(300),
        }
    }
}

/// An image resolved to one manifest.
#[derive(Debug, Clone)]
pub struct Resolved {
    /// The reference, pinned to the manifest's digest (`repo@sha256:...`).
    pub pinned: Reference,
    /// `sha256:<hex>` of the `linux/amd64` manifest.
    pub digest: String,
    manifest: OciImageManifest,
}

/// The node's registry client.
pub struct Registry {
    client: Client,
    options: RegistryOptions,
}

impl std::fmt::Debug for Registry {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Registry")
            .field("options", &self.options)
            .finish_non_exhaustive()
    }
}

fn linux_amd64(entries: &[ImageIndexEntry]) -> Option<String> {
    oci_client::client::linux_amd64_resolver(entries)
}

impl Registry {
    /// A client with `options`.
    pub fn new(options: RegistryOptions) -> Self {
        let config = ClientConfig {
            protocol: ClientProtocol::HttpsExcept(options.insecure.clone()),
            platform_resolver: Some(Box::new(linux_amd64)),
            connect_timeout: Some(options.timeout.min(Duration::from_secs(10))),
            read_timeout: Some(options.timeout),
            ..Default::default()
        };
        Self {
            client: Client::new(config),
            options,
        }
    }

    /// Parses `reference` (`[REGISTRY/]REPOSITORY[:TAG][@DIGEST]`; Docker Hub when no
    /// registry is named).
    pub fn parse(reference: &str) -> Result<Reference, ImageError> {
        if reference.is_empty()
            || reference.len() > 1024
            || reference.chars().any(char::is_whitespace)
        {
            return Err(ImageError::InvalidReference {
                reference: reference.to_owned(),
                detail: "empty, over 1024 bytes, or with white space".into(),
            });
        }
        reference
            .parse()
            .map_err(|e: oci_client::ParseError| ImageError::InvalidReference {
                reference: reference.to_owned(),
                detail: e.to_string(),
            })
    }

    fn auth(&self, reference: &Reference) -> RegistryAuth {
        match self.options.credentials.get(reference.resolve_registry()) {
            Some(c) => RegistryAuth::Basic(c.username.clone(), c.password.clone()),
            None => RegistryAuth::Anonymous,
        }
    }

    async fn deadline<T>(
        &self,
        reference: &str,
        f: impl std::future::Future<Output = Result<T, ImageError>>,
    ) -> Result<T, ImageError> {
        tokio::time::timeout(self.options.timeout, f)
            .await
            .unwrap_or_else(|_| {
                Err(ImageError::Unreachable {
                    reference: reference.to_owned(),
                    detail: format!("no answer within {} s", self.options.timeout.as_secs()),
                })
            })
    }

    /// Resolves `reference` to its `linux/amd64` manifest (no blob is fetched).
    pub async fn resolve(&self, reference: &Reference) -> Result<Resolved, ImageError> {
        let shown = reference.whole();
        self.deadline(&shown, async {
            let auth = self.auth(reference);
            let (manifest, digest) = self
                .client
                .pull_manifest(reference, &auth)
                .await
                .map_err(|e| classify(&shown, e))?;
            let manifest = match manifest {
                OciManifest::Image(m) => m,
                OciManifest::ImageIndex(index) => {
                    let pick =
                        linux_amd64(&index.manifests).ok_or_else(|| ImageError::NoPlatform {
                            reference: shown.clone(),
                            detail: String::new(),
                        })?;
                    let entry = reference.clone_with_digest(pick.clone());
                    match self
                        .client
                        .pull_manifest(&entry, &auth)
                        .await
                        .map_err(|e| classify(&shown, e))?
                    {
                        (OciManifest::Image(m), _) => {
                            return Ok(Resolved {
                                pinned: entry,
                                digest: pick,
                                manifest: m,
                            });
                        }
                        (OciManifest::ImageIndex(_), _) => {
                            return Err(ImageError::Malformed(format!(
                                "{shown}: the linux/amd64 entry of its index is another index"
                            )))
                        }
                    }
                }
            };
            Ok(Resolved {
                pinned: reference.clone_with_digest(digest.clone()),
                digest,
                manifest,
            })
        })
        .await
    }

    /// Fetches the configuration and layers of `image` into `scratch`, refusing more than
    /// `max_bytes` of blobs.
    pub async fn fetch(
        &self,
        image: &Resolved,
        scratch: &Path,
        max_bytes: u64,
    ) -> Result<FetchedImage, ImageError> {
        let shown = image.pinned.whole();
        let declared: i64 = image.manifest.layers.iter().map(|l| l.size.max(0)).sum();
        if u64::try_from(declared).unwrap_or(u64::MAX) > max_bytes {
            return Err(ImageError::TooLarge {
                reference: shown,
                limit_mib: max_bytes >> 20,
            });
        }
        self.deadline(&shown, async {
            let mut config = Vec::new();
            self.blob(
                image,
                &image.manifest.config,
                Capped::new(&mut config, 4 << 20),
                &shown,
            )
            .await?;
            let config = run_config(&shown, &config)?;
            let mut layers = Vec::new();
            for (i, layer) in image.manifest.layers.iter().enumerate() {
                let path = scratch.join(format!("layer-{i}"));
                let file = tokio::fs::File::create(&path)
                    .await
                    .map_err(ImageError::io("create a layer file"))?;
                let size = u64::try_from(layer.size.max(0)).unwrap_or(0);
                self.blob(image, layer, Capped::new(file, size), &shown)
                    .await?;
                layers.push(path);
            }
            Ok(FetchedImage {
                digest: image.digest.clone(),
                config,
                layers,
            })
        })
        .await
    }

    async fn blob<W: tokio::io::AsyncWrite + Unpin>(
        &self,
        image: &Resolved,
        descriptor: &oci_client::manifest::OciDescriptor,
        mut out: Capped<W>,
        shown: &str,
    ) -> Result<(), ImageError> {
        let r = self
            .client
            .pull_blob(&image.pinned, descriptor, &mut out)
            .await;
        if out.over {
            return Err(ImageError::Malformed(format!(
                "{shown}: blob {} is larger than its descriptor says ({} bytes)",
                descriptor.digest, descriptor.size
            )));
        }
        r.map_err(|e| classify(shown, e))?;
        use tokio::io::AsyncWriteExt;
        out.inner
            .flush()
            .await
            .map_err(ImageError::io("write a blob"))
    }
}

/// Maps the client's errors to ours.
fn classify(reference: &str, e: OciDistributionError) -> ImageError {
    use OciDistributionError as E;
    let refused = |detail: String| ImageError::Refused {
        reference: reference.to_owned(),
        detail,
    };
    match e {
        E::ImageManifestNotFoundError(_) => ImageError::NotFound(reference.to_owned()),
        E::RegistryError { ref envelope, .. }
            if envelope.errors.iter().any(|x| {
                matches!(
                    x.code,
                    oci_client::errors::OciErrorCode::ManifestUnknown
                        | oci_client::errors::OciErrorCode::NameUnknown
                        | oci_client::errors::OciErrorCode::BlobUnknown
                )
            }) =>
        {
            ImageError::NotFound(reference.to_owned())
        }
        E::ServerError { code: 404, .. } => ImageError::NotFound(reference.to_owned()),
        E::DigestError(oci_client::errors::DigestError::VerificationError { expected, actual }) => {
            ImageError::DigestMismatch { expected, actual }
        }
        E::RequestError(r) if r.is_timeout() || r.is_connect() => ImageError::Unreachable {
            reference: reference.to_owned(),
            detail: error_chain(&r),
        },
        E::RequestError(r) if r.status().is_some_and(|s| s.as_u16() == 404) => {
            ImageError::NotFound(reference.to_owned())
        }
        E::RequestError(r) => refused(error_chain(&r)),
        E::ManifestParsingError(d) | E::VersionedParsingError(d) => {
            ImageError::Malformed(format!("{reference}: manifest: {d}"))
        }
        E::UnsupportedMediaTypeError(m) => {
            ImageError::Malformed(format!("{reference}: unsupported media type {m}"))
        }
        E::UnsupportedSchemaVersionError(v) => ImageError::Malformed(format!(
            "{reference}: manifest schema version {v} is not supported"
        )),
        other => refused(other.to_string()),
    }
}

fn error_chain(e: &dyn std::error::Error) -> String {
    let mut s = e.to_string();
    let mut source = e.source();
    while let Some(cause) = source {
        s.push_str(": ");
        s.push_str(&cause.to_string());
        source = cause.source();
    }
    s
}

/// A writer that takes at most `left` bytes and remembers whether more were offered.
struct Capped<W> {
    inner: W,
    left: u64,
    over: bool,
}

impl<W> Capped<W> {
    fn new(inner: W, limit: u64) -> Self {
        Self {
            inner,
            left: limit,
            over: false,
        }
    }
}

impl<W: tokio::io::AsyncWrite + Unpin> tokio::io::AsyncWrite for Capped<W> {
    fn poll_write(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
        buf: &[u8],
    ) -> std::task::Poll<std::io::Result<usize>> {
        if buf.len() as u64 > self.left {
            self.over = true;
            return std::task::Poll::Ready(Err(std::io::Error::other(
                "blob larger than its descriptor",
            )));
        }
        let this = &mut *self;
        let r = std::pin::Pin::new(&mut this.inner).poll_write(cx, buf);
        if let std::task::Poll::Ready(Ok(n)) = &r {
            this.left -= *n as u64;
        }
        r
    }

    fn poll_flush(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<std::io::Result<()>> {
        std::pin::Pin::new(&mut self.inner).poll_flush(cx)
    }

    fn poll_shutdown(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<std::io::Result<()>> {
        std::pin::Pin::new(&mut self.inner).poll_shutdown(cx)
    }
}
