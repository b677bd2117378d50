//! Parsing and validation of pushed manifests: OCI image manifests and
//! indexes, Docker schema 2 manifests and manifest lists, and artifact
//! manifests (`artifactType`, `subject`).
//!
//! Parsing is pure: it yields what must exist before the manifest may be
//! stored ([`Requirement`]) and what the referrers API needs; the service
//! layer checks the requirements against the store.

use std::collections::HashMap;

use oci_spec::image::{Descriptor, ImageIndex, ImageManifest};
use serde::Serialize;

use crate::digest::Digest;

pub const OCI_MANIFEST: &str = "application/vnd.oci.image.manifest.v1+json";
pub const OCI_INDEX: &str = "application/vnd.oci.image.index.v1+json";
pub const DOCKER_MANIFEST: &str = "application/vnd.docker.distribution.manifest.v2+json";
pub const DOCKER_LIST: &str = "application/vnd.docker.distribution.manifest.list.v2+json";
const DOCKER_SCHEMA1: &[&str] = &[
    "application/vnd.docker.distribution.manifest.v1+json",
    "application/vnd.docker.distribution.manifest.v1+prettyjws",
];

/// The manifest media types berth stores.
pub const SUPPORTED: &[&str] = &[OCI_MANIFEST, OCI_INDEX, DOCKER_MANIFEST, DOCKER_LIST];

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum ManifestError {
    #[error("manifest is not valid JSON: {0}")]
    Json(String),
    #[error("unsupported schemaVersion (only 2 is supported)")]
    SchemaVersion,
    #[error("Docker schema 1 manifests are not supported")]
    Schema1,
    #[error("cannot tell the manifest's media type")]
    UnknownMediaType,
    #[error("mediaType {body} does not match Content-Type {header}")]
    MediaTypeMismatch { body: String, header: String },
    #[error("invalid descriptor digest {0:?}")]
    DescriptorDigest(String),
    #[error("invalid manifest: {0}")]
    Invalid(String),
}

/// Something a manifest refers to that must exist in the repository.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Requirement {
    /// A blob (config or layer) of exactly this size.
    Blob { digest: Digest, size: u64 },
    /// A child manifest of an index.
    Manifest { digest: Digest },
}

/// A validated manifest.
#[derive(Debug, Clone)]
pub struct Parsed {
    pub media_type: String,
    pub requirements: Vec<Requirement>,
    pub subject: Option<Digest>,
    /// `artifactType`, or for an image manifest without one, the config's media type.
    pub artifact_type: Option<String>,
    pub annotations: Option<HashMap<String, String>>,
}

/// The referrers-API descriptor of a manifest.
#[derive(Debug, Serialize, serde::Deserialize, Clone, PartialEq, Eq)]
#[serde(rename_all = "camelCase")]
pub struct ReferrerDescriptor {
    pub media_type: String,
    pub digest: Digest,
    pub size: u64,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub artifact_type: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub annotations: Option<HashMap<String, String>>,
}

fn known(t: &str) -> Option<&'static str> {
    SUPPORTED.iter().copied().find(|s| *s == t)
}

/// Strips parameters (`; charset=...`) and whitespace from a Content-Type.
fn essence(content_type: &str) -> &str {
    content_type.split(';').next().unwrap_or("").trim()
}

fn digest_of(d: &Descriptor) -> Result<Digest, ManifestError> {
    let s = d.digest().to_string();
    s.parse()
        .map_err(|_| ManifestError::DescriptorDigest(s.clone()))
}

/// Layers that registries do not hold (Windows foreign layers and OCI
/// non-distributable layers) are not required to exist.
fn is_foreign(media_type: &str) -> bool {
    media_type.contains("nondistributable") || media_type.contains(".foreign.")
}

/// Parses and validates `body`, sent with `content_type`.
pub fn parse(content_type: Option<&str>, body: &[u8]) -> Result<Parsed, ManifestError> {
    let value: serde_json::Value =
        serde_json::from_slice(body).map_err(|e| ManifestError::Json(e.to_string()))?;
    let obj = value
        .as_object()
        .ok_or_else(|| ManifestError::Invalid("not a JSON object".into()))?;
    let header = content_type.map(essence).filter(|s| !s.is_empty());
    if header.is_some_and(|h| DOCKER_SCHEMA1.contains(&h))
        || obj.get("schemaVersion") == Some(&1.into())
    {
        return Err(ManifestError::Schema1);
    }
    if obj.get("schemaVersion") != Some(&2.into()) {
        return Err(ManifestError::SchemaVersion);
    }
    let body_type = match obj.get("mediaType") {
        None => None,
        Some(serde_json::Value::String(s)) => Some(s.as_str()),
        Some(_) => return Err(ManifestError::Invalid("mediaType is not a string".into())),
    };
    let media_type = match (body_type, header.and_then(known)) {
        (Some(b), Some(h)) if b != h => {
            return Err(ManifestError::MediaTypeMismatch {
                body: b.to_owned(),
                header: h.to_owned(),
            });
        }
        (Some(b), _) => known(b).ok_or(ManifestError::UnknownMediaType)?,
        (None, Some(h)) => h,
        (None, None) if obj.contains_key("manifests") => OCI_INDEX,
        (None, None) if obj.contains_key("config") => OCI_MANIFEST,
        (None, None) => return Err(ManifestError::UnknownMediaType),
    };

    let invalid = |e: serde_json::Error| ManifestError::Invalid(e.to_string());
    if media_type == OCI_MANIFEST || media_type == DOCKER_MANIFEST {
        if obj.contains_key("manifests") {
            return Err(ManifestError::Invalid(
                "an image manifest has no manifests field".into(),
            ));
        }
        let m: ImageManifest = serde_json::from_value(value).map_err(invalid)?;
        let mut requirements = Vec::with_capacity(m.layers().len() + 1);
        for d in std::iter::once(m.config()).chain(m.layers()) {
            if is_foreign(d.media_type().as_ref()) {
                continue;
            }
            requirements.push(Requirement::Blob {
                digest: digest_of(d)?,
                size: d.size(),
            });
        }
        let artifact_type = m
            .artifact_type()
            .as_ref()
            .map(|t| t.to_string())
            .or_else(|| Some(m.config().media_type().to_string()));
        Ok(Parsed {
            media_type: media_type.to_owned(),
            requirements,
            subject: m.subject().as_ref().map(digest_of).transpose()?,
            artifact_type,
            annotations: m.annotations().clone(),
        })
    } else {
        if obj.contains_key("config") || obj.contains_key("layers") {
            return Err(ManifestError::Invalid(
                "an index has no config or layers".into(),
            ));
        }
        let i: ImageIndex = serde_json::from_value(value).map_err(invalid)?;
        let requirements = i
            .manifests()
            .iter()
            .map(|d| digest_of(d).map(|digest| Requirement::Manifest { digest }))
            .collect::<Result<_, _>>()?;
        Ok(Parsed {
            media_type: media_type.to_owned(),
            requirements,
            subject: i.subject().as_ref().map(digest_of).transpose()?,
            artifact_type: i.artifact_type().as_ref().map(|t| t.to_string()),
            annotations: i.annotations().clone(),
        })
    }
}

/// Whether a client that sent these `Accept` values takes `media_type`.
/// No `Accept` at all, or `*/*`, takes anything.
pub fn accepted<'a>(accept: impl IntoIterator<Item = &'a str>, media_type: &str) -> bool {
    let mut any = false;
    for header in accept {
        for item in header.split(',') {
            let t = essence(item);
            if t.is_empty() {
                continue;
            }
            any = true;
            if t == media_type || t == "*/*" || t == "application/*" {
                return true;
            }
        }
    }
    !any
}

#[cfg(test)]
mod tests {
    use super::*;

    fn d(c: char) -> String {
        format!("sha256:{}", c.to_string().repeat(64))
    }

    fn image(extra: &str) -> String {
        format!(
            r#"{{"schemaVersion":2,"mediaType":"{OCI_MANIFEST}",
            "config":{{"mediaType":"application/vnd.oci.image.config.v1+json","digest":"{}","size":7}},
            "layers":[{{"mediaType":"application/vnd.oci.image.layer.v1.tar+gzip","digest":"{}","size":9}}]{extra}}}"#,
            d('a'),
            d('b')
        )
    }

    #[test]
    fn image_manifest_requirements() {
        let p = parse(Some(OCI_MANIFEST), image("").as_bytes()).unwrap();
        assert_eq!(p.media_type, OCI_MANIFEST);
        assert_eq!(
            p.requirements,
            vec![
                Requirement::Blob {
                    digest: d('a').parse().unwrap(),
                    size: 7
                },
                Requirement::Blob {
                    digest: d('b').parse().unwrap(),
                    size: 9
                },
            ]
        );
        assert_eq!(p.subject, None);
        assert_eq!(
            p.artifact_type.as_deref(),
            Some("application/vnd.oci.image.config.v1+json")
        );
    }

    #[test]
    fn artifact_with_subject() {
        let extra = format!(
            r#","artifactType":"application/x-sig","subject":{{"mediaType":"{OCI_MANIFEST}","digest":"{}","size":3}}"#,
            d('c')
        );
        let p = parse(None, image(&extra).as_bytes()).unwrap();
        assert_eq!(p.subject, Some(d('c').parse().unwrap()));
        assert_eq!(p.artifact_type.as_deref(), Some("application/x-sig"));
    }

    #[test]
    fn index_requires_children() {
        let body = format!(
            r#"{{"schemaVersion":2,"mediaType":"{DOCKER_LIST}","manifests":[{{"mediaType":"{DOCKER_MANIFEST}","digest":"{}","size":5,"platform":{{"architecture":"amd64","os":"linux"}}}}]}}"#,
            d('e')
        );
        let p = parse(Some(DOCKER_LIST), body.as_bytes()).unwrap();
        assert_eq!(
            p.requirements,
            vec![Requirement::Manifest {
                digest: d('e').parse().unwrap()
            }]
        );
    }

    #[test]
    fn refusals() {
        assert!(matches!(parse(None, b"{"), Err(ManifestError::Json(_))));
        assert_eq!(
            parse(None, br#"{"schemaVersion":1,"name":"x"}"#).unwrap_err(),
            ManifestError::Schema1
        );
        assert_eq!(
            parse(None, br#"{"schemaVersion":3}"#).unwrap_err(),
            ManifestError::SchemaVersion
        );
        assert!(matches!(
            parse(Some(OCI_INDEX), image("").as_bytes()),
            Err(ManifestError::MediaTypeMismatch { .. })
        ));
        // config missing
        assert!(matches!(
            parse(Some(OCI_MANIFEST), br#"{"schemaVersion":2,"layers":[]}"#),
            Err(ManifestError::Invalid(_))
        ));
        // bad descriptor digest
        let bad = image("").replace(&d('b'), "sha256:xyz");
        assert!(parse(None, bad.as_bytes()).is_err());
    }

    #[test]
    fn foreign_layers_are_not_required() {
        let body = image("").replace(
            "application/vnd.oci.image.layer.v1.tar+gzip",
            "application/vnd.oci.image.layer.nondistributable.v1.tar+gzip",
        );
        let p = parse(None, body.as_bytes()).unwrap();
        assert_eq!(p.requirements.len(), 1);
    }

    #[test]
    fn accept_negotiation() {
        assert!(accepted([], OCI_INDEX));
        assert!(accepted([DOCKER_MANIFEST, OCI_INDEX], OCI_INDEX));
        assert!(accepted(
            [&*format!("{DOCKER_MANIFEST}, {OCI_INDEX};q=0.5")],
            OCI_INDEX
        ));
        assert!(!accepted([DOCKER_MANIFEST, DOCKER_LIST], OCI_MANIFEST));
        assert!(accepted(["*/*"], OCI_MANIFEST));
    }
}
