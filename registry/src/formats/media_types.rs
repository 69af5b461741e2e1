//! Media types, named once.

pub const OCI_MANIFEST: &str = "application/vnd.oci.image.manifest.v1+json";
pub const OCI_INDEX: &str = "application/vnd.oci.image.index.v1+json";
pub const OCI_CONFIG: &str = "application/vnd.oci.image.config.v1+json";
pub const OCI_LAYER_TAR: &str = "application/vnd.oci.image.layer.v1.tar";
pub const OCI_LAYER_TAR_GZIP: &str = "application/vnd.oci.image.layer.v1.tar+gzip";
pub const OCI_EMPTY: &str = "application/vnd.oci.empty.v1+json";
pub const DOCKER_MANIFEST: &str = "application/vnd.docker.distribution.manifest.v2+json";
pub const DOCKER_MANIFEST_LIST: &str = "application/vnd.docker.distribution.manifest.list.v2+json";
pub const DOCKER_CONFIG: &str = "application/vnd.docker.container.image.v1+json";
pub const DOCKER_LAYER_TAR_GZIP: &str = "application/vnd.docker.image.rootfs.diff.tar.gzip";
pub const DOCKER_LAYER_TAR: &str = "application/vnd.docker.image.rootfs.diff.tar";
pub const OCTET_STREAM: &str = "application/octet-stream";

/// The `artifactType` of files stored with `format=artifact`.
pub const REPOSURE_FILE_ARTIFACT: &str = "application/vnd.reposure.file.v1";

/// Every manifest type a client must list in `Accept` (a registry answers 404 for an OCI
/// manifest when its type is missing).
pub const ACCEPTED_MANIFESTS: [&str; 4] = [
    OCI_MANIFEST,
    OCI_INDEX,
    DOCKER_MANIFEST,
    DOCKER_MANIFEST_LIST,
];

/// Annotation naming a layer's file.
pub const ANNOTATION_TITLE: &str = "org.opencontainers.image.title";
/// Annotation with the RFC 3339 creation time.
pub const ANNOTATION_CREATED: &str = "org.opencontainers.image.created";
/// Layer annotation of a single-file image: the file's modification time with nanoseconds
/// (RFC 3339), which the tar header holds to the second only.
pub const ANNOTATION_FILE_MODIFIED: &str = "dev.reposure.file.modified";
/// Layer annotation of a single-file artifact (which has no tar header): the file's mode,
/// in octal.
pub const ANNOTATION_FILE_MODE: &str = "dev.reposure.file.mode";
/// Annotation naming a manifest in an image layout's `index.json`.
pub const ANNOTATION_REF_NAME: &str = "org.opencontainers.image.ref.name";

/// Whether a layer media type is an uncompressed tar.
pub fn is_tar(media_type: &str) -> bool {
    media_type == OCI_LAYER_TAR || media_type == DOCKER_LAYER_TAR
}

/// Whether a layer media type is gzip (of a tar, or of raw bytes as the Go Reposure wrote).
pub fn is_gzip(media_type: &str) -> bool {
    media_type == OCI_LAYER_TAR_GZIP
        || media_type == DOCKER_LAYER_TAR_GZIP
        || media_type.ends_with("+gzip")
}
