//! A node's identity on the cluster's mutual TLS. Each node's certificate, signed by the
//! cluster's CA, names the node ([`node_tls_name`]); a node connects to a peer only as that
//! peer's name, and accepts a call made on behalf of a node (a thief stealing or renewing, an
//! executor returning a result, an origin offering work) only from a certificate naming that
//! node. So gossip saying that a node is at another address changes nothing until the node
//! there proves it holds that node's certificate, and one member cannot speak for another.

use rcgen::{
    BasicConstraints, CertificateParams, DnType, ExtendedKeyUsagePurpose, IsCa, KeyPair,
    KeyUsagePurpose,
};
use rustls_pki_types::pem::PemObject;
use rustls_pki_types::{CertificateDer, ServerName};

use crate::{ClusterError, ClusterTls};

/// The DNS suffix of every node's name.
const SUFFIX: &str = "node.ignition-cluster";
/// The longest node id: its name (hex, in labels of at most 62) stays within DNS's 253.
pub const MAX_NODE_ID: usize = 100;

/// Whether `id` can be a node's id: 1 to [`MAX_NODE_ID`] letters, digits, `-`, `_` and `.`
/// (a host name is one, the default).
pub fn validate_node_id(id: &str) -> Result<(), String> {
    if id.is_empty()
        || id.len() > MAX_NODE_ID
        || !id
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.'))
    {
        return Err(format!(
            "node id {id:?}: use 1 to {MAX_NODE_ID} letters, digits, '-', '_' and '.'"
        ));
    }
    Ok(())
}

/// The name node `id`'s certificate carries: its bytes in hex (node ids differ in case and may
/// hold `_`, which DNS names do not keep apart or allow), in labels, under
/// `node.ignition-cluster`.
pub fn node_tls_name(id: &str) -> String {
    let hex = hex::encode(id.as_bytes());
    let mut name = String::new();
    for label in hex.as_bytes().chunks(62) {
        name.push_str(&String::from_utf8_lossy(label));
        name.push('.');
    }
    name.push_str(SUFFIX);
    name
}

/// Whether `cert` (DER) is a certificate for node `id`. Its chain to the cluster's CA is
/// TLS's to check; this checks the name.
pub(crate) fn names_node(cert: &CertificateDer<'_>, id: &str) -> bool {
    let Ok(name) = ServerName::try_from(node_tls_name(id)) else {
        return false;
    };
    webpki::EndEntityCert::try_from(cert)
        .is_ok_and(|c| c.verify_is_valid_for_subject_name(&name).is_ok())
}

/// Checks that `tls.cert` is node `id`'s: a node started with another's certificate, or with
/// one made before certificates named their node, would have every peer refuse it.
pub fn check_own_certificate(tls: &ClusterTls, id: &str) -> Result<(), ClusterError> {
    let cert = CertificateDer::from_pem_slice(&tls.cert)
        .map_err(|e| ClusterError::Tls(format!("the node's certificate: {e}")))?;
    if names_node(&cert, id) {
        return Ok(());
    }
    Err(ClusterError::Tls(format!(
        "the certificate given with --cluster-cert is not node {id:?}'s (it must name {}); \
         make the cluster's certificates with `ignition cluster certs --node {id} ...` \
         (certificates made before they named their node must be made again)",
        node_tls_name(id)
    )))
}

/// A cluster's CA and each node's certificate and key, all PEM.
#[derive(Debug)]
pub struct ClusterCerts {
    /// The CA's certificate (every node's `--cluster-ca`).
    pub ca: String,
    /// The CA's key: keep it away from the nodes, it makes members.
    pub ca_key: String,
    /// (node id, certificate, key) for each node.
    pub nodes: Vec<(String, String, String)>,
}

/// Makes a cluster's CA and a certificate for each of `nodes`, naming it.
pub fn make_certs(nodes: &[String]) -> Result<ClusterCerts, ClusterError> {
    let tls = |e: rcgen::Error| ClusterError::Tls(e.to_string());
    for n in nodes {
        validate_node_id(n).map_err(ClusterError::Tls)?;
    }
    let mut ca_params = CertificateParams::new(Vec::<String>::new()).map_err(tls)?;
    ca_params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    ca_params
        .distinguished_name
        .push(DnType::CommonName, "Ignition cluster CA");
    ca_params.key_usages = vec![
        KeyUsagePurpose::KeyCertSign,
        KeyUsagePurpose::CrlSign,
        KeyUsagePurpose::DigitalSignature,
    ];
    let ca_key = KeyPair::generate().map_err(tls)?;
    let ca = ca_params.self_signed(&ca_key).map_err(tls)?;
    let mut made = Vec::new();
    for node in nodes {
        let mut p = CertificateParams::new(vec![node_tls_name(node)]).map_err(tls)?;
        p.distinguished_name.push(DnType::CommonName, node.as_str());
        p.extended_key_usages = vec![
            ExtendedKeyUsagePurpose::ServerAuth,
            ExtendedKeyUsagePurpose::ClientAuth,
        ];
        let key = KeyPair::generate().map_err(tls)?;
        let cert = p.signed_by(&key, &ca, &ca_key).map_err(tls)?;
        made.push((node.clone(), cert.pem(), key.serialize_pem()));
    }
    Ok(ClusterCerts {
        ca: ca.pem(),
        ca_key: ca_key.serialize_pem(),
        nodes: made,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_keep_ids_apart_and_are_dns_names() {
        let ids = [
            "a",
            "A",
            "node_1",
            "node-1",
            "host.example.com",
            &"x".repeat(MAX_NODE_ID),
        ];
        let names: std::collections::HashSet<_> = ids.iter().map(|i| node_tls_name(i)).collect();
        assert_eq!(names.len(), ids.len());
        for n in &names {
            assert!(n.len() <= 253, "{n}");
            ServerName::try_from(n.clone()).unwrap_or_else(|e| panic!("{n}: {e}"));
        }
        for bad in ["", "a b", "a/b", "é", &"x".repeat(MAX_NODE_ID + 1)] {
            assert!(validate_node_id(bad).is_err(), "{bad:?}");
        }
    }

    #[test]
    fn a_certificate_names_its_node_and_no_other() {
        let certs = make_certs(&["a".into(), "b".into()]).unwrap();
        let (_, a_pem, a_key) = &certs.nodes[0];
        let a = CertificateDer::from_pem_slice(a_pem.as_bytes()).unwrap();
        assert!(names_node(&a, "a"));
        assert!(!names_node(&a, "b"));
        assert!(!names_node(&a, "A"), "ids differ in case");
        let tls = ClusterTls {
            ca: certs.ca.into_bytes(),
            cert: a_pem.clone().into_bytes(),
            key: a_key.clone().into_bytes(),
        };
        check_own_certificate(&tls, "a").unwrap();
        let e = check_own_certificate(&tls, "b").unwrap_err().to_string();
        assert!(e.contains("not node \"b\"'s"), "{e}");
    }
}
