//! A tiny busybox OCI image layout built at test time from the host's `/bin/busybox`.

use std::collections::HashMap;
use std::fs;
use std::io::{self, Write};
use std::path::{Path, PathBuf};
use std::str::FromStr;

use flate2::Compression;
use flate2::write::GzEncoder;
use oci_spec::image::{
    Arch, ConfigBuilder, DescriptorBuilder, Digest, ImageConfigurationBuilder, ImageIndexBuilder,
    ImageManifestBuilder, MediaType, OciLayoutBuilder, Os, PlatformBuilder, RootFsBuilder,
};
use sha2::{Digest as _, Sha256};

/// Where the busybox binary comes from (Debian's `busybox-static`).
const BUSYBOX: &str = "/bin/busybox";
/// Applets linked into `/bin` of the image.
const APPLETS: &[&str] = &[
    "sh", "ash", "httpd", "sleep", "echo", "cat", "ls", "wget", "nc", "env", "id", "pwd", "true",
    "false", "kill", "ps", "mkdir", "rm", "touch", "grep", "hostname", "ip", "ifconfig", "mount",
    "printf", "test", "head", "tail", "wc", "date", "uname", "whoami", "seq", "tee", "chmod",
];
/// `PATH` in the image config.
pub const IMAGE_PATH_ENV: &str =
    "PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin";
/// Fixed mtime so the same busybox always yields the same digests.
const MTIME: u64 = 1_700_000_000;

/// Why the image layout could not be built or written.
#[derive(Debug, thiserror::Error)]
pub enum ImageLayoutError {
    /// Reading busybox or writing the layout failed.
    #[error("{context}")]
    Io {
        /// What was being done.
        context: String,
        /// The underlying error.
        #[source]
        source: io::Error,
    },
    /// An OCI document could not be built or serialized.
    #[error("build OCI {what}")]
    Oci {
        /// Which document.
        what: &'static str,
        /// The underlying error.
        #[source]
        source: oci_spec::OciSpecError,
    },
}

fn io_err(context: impl Into<String>) -> impl FnOnce(io::Error) -> ImageLayoutError {
    let context = context.into();
    move |source| ImageLayoutError::Io { context, source }
}

fn oci_err(what: &'static str) -> impl FnOnce(oci_spec::OciSpecError) -> ImageLayoutError {
    move |source| ImageLayoutError::Oci { what, source }
}

/// One blob of the layout.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BlobRecord {
    /// `sha256:<hex>`.
    pub digest: String,
    /// Size in bytes.
    pub size: u64,
    /// OCI media type.
    pub media_type: String,
}

/// One layer: the compressed blob plus the digest of its uncompressed tar.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LayerRecord {
    /// The gzip blob.
    pub blob: BlobRecord,
    /// `sha256` of the uncompressed tar (the config's `rootfs.diff_ids` entry).
    pub diff_id: String,
}

/// An OCI image layout on disk (`oci-layout`, `index.json`, `blobs/sha256/*`) and what it holds.
#[derive(Debug, Clone)]
pub struct ImageLayout {
    /// The layout directory.
    pub dir: PathBuf,
    /// The index (`index.json`) itself, as it would be stored as a blob.
    pub index: BlobRecord,
    /// The single manifest.
    pub manifest: BlobRecord,
    /// The image config.
    pub config: BlobRecord,
    /// The layers, base first.
    pub layers: Vec<LayerRecord>,
    /// `org.opencontainers.image.ref.name` of the manifest in `index.json`.
    pub ref_name: String,
}

fn sha256(bytes: &[u8]) -> String {
    format!("sha256:{}", hex::encode(Sha256::digest(bytes)))
}

fn write_blob(dir: &Path, bytes: &[u8], media_type: &str) -> Result<BlobRecord, ImageLayoutError> {
    let digest = sha256(bytes);
    let hex = digest.trim_start_matches("sha256:");
    let path = dir.join("blobs").join("sha256").join(hex);
    fs::write(&path, bytes).map_err(io_err(format!("write blob {}", path.display())))?;
    Ok(BlobRecord {
        digest,
        size: bytes.len() as u64,
        media_type: media_type.to_string(),
    })
}

fn layer_tar() -> Result<Vec<u8>, ImageLayoutError> {
    let busybox = fs::read(BUSYBOX).map_err(io_err(format!(
        "read {BUSYBOX} (install Debian's busybox-static)"
    )))?;
    let mut tar = tar::Builder::new(Vec::new());
    let header = |kind: tar::EntryType, mode: u32, size: u64| {
        let mut h = tar::Header::new_gnu();
        h.set_entry_type(kind);
        h.set_mode(mode);
        h.set_size(size);
        h.set_mtime(MTIME);
        h.set_uid(0);
        h.set_gid(0);
        h
    };
    let append_err = io_err("build layer tar");
    let result = (|| -> io::Result<()> {
        for d in [
            "bin/", "etc/", "tmp/", "proc/", "sys/", "dev/", "root/", "www/",
        ] {
            let mut h = header(
                tar::EntryType::Directory,
                if d == "tmp/" { 0o1777 } else { 0o755 },
                0,
            );
            tar.append_data(&mut h, d, io::empty())?;
        }
        let mut h = header(tar::EntryType::Regular, 0o755, busybox.len() as u64);
        tar.append_data(&mut h, "bin/busybox", busybox.as_slice())?;
        for applet in APPLETS {
            let mut h = header(tar::EntryType::Symlink, 0o777, 0);
            tar.append_link(&mut h, format!("bin/{applet}"), "busybox")?;
        }
        let passwd = b"root:x:0:0:root:/root:/bin/sh\nnobody:x:65534:65534:nobody:/:/bin/false\n";
        let mut h = header(tar::EntryType::Regular, 0o644, passwd.len() as u64);
        tar.append_data(&mut h, "etc/passwd", passwd.as_slice())?;
        let group = b"root:x:0:\nnogroup:x:65534:\n";
        let mut h = header(tar::EntryType::Regular, 0o644, group.len() as u64);
        tar.append_data(&mut h, "etc/group", group.as_slice())?;
        tar.finish()
    })();
    result.map_err(append_err)?;
    tar.into_inner().map_err(io_err("finish layer tar"))
}

fn gzip(bytes: &[u8]) -> Result<Vec<u8>, ImageLayoutError> {
    let mut enc = GzEncoder::new(Vec::new(), Compression::fast());
    enc.write_all(bytes).map_err(io_err("gzip layer"))?;
    enc.finish().map_err(io_err("gzip layer"))
}

fn host_arch() -> Arch {
    match std::env::consts::ARCH {
        "x86_64" => Arch::Amd64,
        "aarch64" => Arch::ARM64,
        other => Arch::from(other),
    }
}

fn digest(value: &str) -> Result<Digest, ImageLayoutError> {
    Digest::from_str(value).map_err(oci_err("digest"))
}

/// Builds a one-layer busybox image as an OCI layout in `dir` (created if missing): a gzip
/// layer with `/bin/busybox` and applet symlinks (`sh`, `httpd`, `sleep`, `echo`, `cat`, `ls`,
/// `wget`, `nc`, ...), `/etc/passwd`, `/tmp`; a config with `Env [PATH=...]` and `Cmd ["sh"]`;
/// a manifest; `index.json` naming it `latest`. Digests are stable for a given busybox binary.
/// Fails when `/bin/busybox` is missing or `dir` is not writable.
pub fn busybox_image_layout(dir: impl AsRef<Path>) -> Result<ImageLayout, ImageLayoutError> {
    let dir = dir.as_ref().to_path_buf();
    fs::create_dir_all(dir.join("blobs").join("sha256"))
        .map_err(io_err(format!("create {}", dir.display())))?;

    let tar = layer_tar()?;
    let diff_id = sha256(&tar);
    let layer_blob = write_blob(
        &dir,
        &gzip(&tar)?,
        "application/vnd.oci.image.layer.v1.tar+gzip",
    )?;

    let config = ImageConfigurationBuilder::default()
        .architecture(host_arch())
        .os(Os::Linux)
        .config(
            ConfigBuilder::default()
                .env(vec![IMAGE_PATH_ENV.to_string()])
                .cmd(vec!["sh".to_string()])
                .build()
                .map_err(oci_err("image config"))?,
        )
        .rootfs(
            RootFsBuilder::default()
                .typ("layers")
                .diff_ids(vec![diff_id.clone()])
                .build()
                .map_err(oci_err("rootfs"))?,
        )
        .build()
        .map_err(oci_err("image config"))?;
    let config_json = config.to_string().map_err(oci_err("image config"))?;
    let config_blob = write_blob(
        &dir,
        config_json.as_bytes(),
        "application/vnd.oci.image.config.v1+json",
    )?;

    let descriptor = |blob: &BlobRecord, media: MediaType| {
        DescriptorBuilder::default()
            .media_type(media)
            .digest(digest(&blob.digest)?)
            .size(blob.size)
            .build()
            .map_err(oci_err("descriptor"))
    };
    let manifest = ImageManifestBuilder::default()
        .schema_version(2u32)
        .media_type(MediaType::ImageManifest)
        .config(descriptor(&config_blob, MediaType::ImageConfig)?)
        .layers(vec![descriptor(&layer_blob, MediaType::ImageLayerGzip)?])
        .build()
        .map_err(oci_err("manifest"))?;
    let manifest_json = manifest.to_string().map_err(oci_err("manifest"))?;
    let manifest_blob = write_blob(
        &dir,
        manifest_json.as_bytes(),
        "application/vnd.oci.image.manifest.v1+json",
    )?;

    let ref_name = "latest".to_string();
    let mut manifest_desc = descriptor(&manifest_blob, MediaType::ImageManifest)?;
    manifest_desc.set_annotations(Some(HashMap::from([(
        "org.opencontainers.image.ref.name".to_string(),
        ref_name.clone(),
    )])));
    manifest_desc.set_platform(Some(
        PlatformBuilder::default()
            .architecture(host_arch())
            .os(Os::Linux)
            .build()
            .map_err(oci_err("platform"))?,
    ));
    let index = ImageIndexBuilder::default()
        .schema_version(2u32)
        .media_type(MediaType::ImageIndex)
        .manifests(vec![manifest_desc])
        .build()
        .map_err(oci_err("index"))?;
    let index_json = index.to_string().map_err(oci_err("index"))?;
    fs::write(dir.join("index.json"), &index_json).map_err(io_err("write index.json"))?;
    let layout = OciLayoutBuilder::default()
        .image_layout_version("1.0.0")
        .build()
        .map_err(oci_err("oci-layout"))?;
    layout
        .to_file(dir.join("oci-layout"))
        .map_err(oci_err("oci-layout"))?;

    Ok(ImageLayout {
        index: BlobRecord {
            digest: sha256(index_json.as_bytes()),
            size: index_json.len() as u64,
            media_type: "application/vnd.oci.image.index.v1+json".to_string(),
        },
        manifest: manifest_blob,
        config: config_blob,
        layers: vec![LayerRecord {
            blob: layer_blob,
            diff_id,
        }],
        ref_name,
        dir,
    })
}

impl ImageLayout {
    /// Path of a blob of this layout given its `sha256:<hex>` digest.
    pub fn blob_path(&self, digest: &str) -> PathBuf {
        let hex = digest.trim_start_matches("sha256:");
        self.dir.join("blobs").join("sha256").join(hex)
    }

    /// Writes the layout as an oci-archive (a plain tar of `oci-layout`, `index.json` and
    /// `blobs/`), as `skopeo copy oci-archive:PATH` and `converge artifact import` read it.
    /// Fails when `path` cannot be written; a partial file is removed.
    pub fn to_oci_archive(&self, path: impl AsRef<Path>) -> Result<(), ImageLayoutError> {
        let path = path.as_ref();
        let result = (|| -> io::Result<()> {
            let file = fs::File::create(path)?;
            let mut tar = tar::Builder::new(file);
            tar.append_path_with_name(self.dir.join("oci-layout"), "oci-layout")?;
            tar.append_path_with_name(self.dir.join("index.json"), "index.json")?;
            tar.append_dir("blobs", self.dir.join("blobs"))?;
            tar.append_dir("blobs/sha256", self.dir.join("blobs").join("sha256"))?;
            let blobs = [&self.manifest, &self.config]
                .into_iter()
                .chain(self.layers.iter().map(|l| &l.blob));
            for blob in blobs {
                let hex = blob.digest.trim_start_matches("sha256:");
                tar.append_path_with_name(
                    self.blob_path(&blob.digest),
                    format!("blobs/sha256/{hex}"),
                )?;
            }
            tar.into_inner()?.flush()
        })();
        if let Err(source) = result {
            let _ = fs::remove_file(path);
            return Err(ImageLayoutError::Io {
                context: format!("write oci-archive {}", path.display()),
                source,
            });
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn busybox_layout_records_digests_that_match_its_blobs() {
        let dir = tempfile::tempdir().expect("tempdir");
        let layout = busybox_image_layout(dir.path().join("bb")).expect("layout");
        for blob in [&layout.manifest, &layout.config, &layout.layers[0].blob] {
            let bytes = fs::read(layout.blob_path(&blob.digest)).expect("blob");
            assert_eq!(sha256(&bytes), blob.digest);
            assert_eq!(bytes.len() as u64, blob.size);
        }
        let again = busybox_image_layout(dir.path().join("bb2")).expect("layout");
        assert_eq!(
            again.manifest.digest, layout.manifest.digest,
            "digests are stable"
        );
    }

    #[test]
    fn oci_archive_holds_the_layout_files() {
        let dir = tempfile::tempdir().expect("tempdir");
        let layout = busybox_image_layout(dir.path().join("bb")).expect("layout");
        let archive = dir.path().join("bb.tar");
        layout.to_oci_archive(&archive).expect("archive");
        let mut names = Vec::new();
        let mut tar = tar::Archive::new(fs::File::open(&archive).expect("open"));
        for entry in tar.entries().expect("entries") {
            let entry = entry.expect("entry");
            names.push(entry.path().expect("path").display().to_string());
        }
        assert!(names.contains(&"index.json".to_string()));
        assert!(names.contains(&"oci-layout".to_string()));
        let hex = layout.manifest.digest.trim_start_matches("sha256:");
        assert!(names.contains(&format!("blobs/sha256/{hex}")));
    }
}
