//! Images and volumes in /gvs: reading an image directory (its volumes and
//! `image.toml`, how it boots), cloning volumes into an application's
//! directory, and asking gvsfs where a volume's mirrors are.
//!
//! Cloning tries `copy_file_range` first (O(1) once gvsfs implements it as
//! a copy-on-write clone) and falls back to a sparse copy that skips
//! all-zero blocks.

use crate::model::BootSpec;
use serde::Deserialize;
use std::fs;
use std::io::{Read, Seek, SeekFrom, Write};
use std::os::fd::AsRawFd;
use std::path::{Path, PathBuf};

/// Errors of images and volumes.
#[derive(Debug, thiserror::Error)]
pub enum VolumeError {
    /// A file operation failed.
    #[error("{what}: {source}")]
    Io {
        /// What was being done.
        what: String,
        /// Why it failed.
        source: std::io::Error,
    },
    /// The image directory is not usable.
    #[error("image {dir}: {why}")]
    Image {
        /// The directory.
        dir: String,
        /// Why.
        why: String,
    },
}

fn io(what: impl Into<String>) -> impl FnOnce(std::io::Error) -> VolumeError {
    let what = what.into();
    move |source| VolumeError::Io { what, source }
}

/// An image's `image.toml`.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ImageToml {
    /// Kernel file, relative to the image directory.
    pub kernel: String,
    /// Initrd file, relative.
    pub initrd: Option<String>,
    /// Kernel command line.
    #[serde(default)]
    pub cmdline: String,
    /// The template volumes, root first.
    pub volumes: Option<Vec<String>>,
}

/// What an image offers: how to boot, and its template volumes.
#[derive(Debug, Clone)]
pub struct Image {
    /// Boot spec with absolute paths.
    pub boot: BootSpec,
    /// Template volumes, absolute paths, root first.
    pub volumes: Vec<PathBuf>,
}

/// Reads image directory `dir`; `only` restricts (and orders) its volumes.
pub fn read_image(dir: &Path, only: Option<&[String]>) -> Result<Image, VolumeError> {
    let bad = |why: String| VolumeError::Image {
        dir: dir.display().to_string(),
        why,
    };
    if !dir.is_dir() {
        return Err(bad(
            "no such directory (build and import one with vmctl/appliance/build.sh)".into(),
        ));
    }
    let text =
        fs::read_to_string(dir.join("image.toml")).map_err(|e| bad(format!("image.toml: {e}")))?;
    let t: ImageToml =
        toml::from_str(&text).map_err(|e| bad(format!("image.toml: {}", e.message())))?;
    let names: Vec<String> = match (only, &t.volumes) {
        (Some(o), _) => o.to_vec(),
        (None, Some(v)) => v.clone(),
        (None, None) => {
            let mut v: Vec<String> = fs::read_dir(dir)
                .map_err(io(format!("listing {}", dir.display())))?
                .flatten()
                .map(|e| e.file_name().to_string_lossy().into_owned())
                .filter(|n| n.ends_with(".vol"))
                .collect();
            v.sort();
            v
        }
    };
    if names.is_empty() {
        return Err(bad("has no volumes".into()));
    }
    let mut volumes = Vec::new();
    for n in names {
        let p = dir.join(&n);
        if !p.is_file() {
            return Err(bad(format!("no volume {n}")));
        }
        volumes.push(p);
    }
    let kernel = dir.join(&t.kernel);
    if !kernel.is_file() {
        return Err(bad(format!("no kernel {}", t.kernel)));
    }
    Ok(Image {
        boot: BootSpec {
            kernel: kernel.display().to_string(),
            initrd: t.initrd.map(|i| dir.join(i).display().to_string()),
            cmdline: t.cmdline,
        },
        volumes,
    })
}

/// Clones `src` to a new file `dst` (which must not exist).
pub fn clone_volume(src: &Path, dst: &Path) -> Result<(), VolumeError> {
    let what = || format!("cloning {} to {}", src.display(), dst.display());
    let mut from = fs::File::open(src).map_err(io(what()))?;
    let len = from.metadata().map_err(io(what()))?.len();
    let mut to = fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .open(dst)
        .map_err(io(what()))?;
    if !try_copy_file_range(&from, &to, len) {
        sparse_copy(&mut from, &mut to, len).map_err(io(what()))?;
    }
    to.sync_all().map_err(io(what()))?;
    Ok(())
}

/// Whole-file `copy_file_range`; false if the file system does not do it
/// (nothing was written then).
fn try_copy_file_range(from: &fs::File, to: &fs::File, len: u64) -> bool {
    let mut done: u64 = 0;
    while done < len {
        let mut off_in = done as libc::loff_t;
        let mut off_out = done as libc::loff_t;
        let n = unsafe {
            // SAFETY: valid fds and offsets owned by this frame.
            libc::copy_file_range(
                from.as_raw_fd(),
                &mut off_in,
                to.as_raw_fd(),
                &mut off_out,
                (len - done).min(1 << 30) as usize,
                0,
            )
        };
        if n <= 0 {
            if done == 0 {
                return false;
            }
            // Partial: finish with the fallback from where it stopped.
            return false;
        }
        done += n as u64;
    }
    to.set_len(len).is_ok()
}

fn sparse_copy(from: &mut fs::File, to: &mut fs::File, len: u64) -> std::io::Result<()> {
    const BLOCK: usize = 1 << 16;
    from.seek(SeekFrom::Start(0))?;
    to.seek(SeekFrom::Start(0))?;
    let mut buf = vec![0u8; BLOCK];
    let mut pos = 0u64;
    while pos < len {
        let want = BLOCK.min((len - pos) as usize);
        from.read_exact(&mut buf[..want])?;
        if buf[..want].iter().all(|&b| b == 0) {
            to.seek(SeekFrom::Current(want as i64))?;
        } else {
            to.write_all(&buf[..want])?;
        }
        pos += want as u64;
    }
    to.set_len(len)
}

/// The nodes holding a mirror of volume `path` (gvsfs's `gvs.replicas`
/// extended attribute); empty when not on gvsfs.
pub fn replicas(path: &Path) -> Vec<String> {
    use std::os::unix::ffi::OsStrExt;
    let Ok(p) = std::ffi::CString::new(path.as_os_str().as_bytes()) else {
        return vec![];
    };
    let name = c"gvs.replicas";
    let mut buf = vec![0u8; 1024];
    let n = unsafe {
        // SAFETY: valid C strings and a buffer of the given length.
        libc::getxattr(
            p.as_ptr(),
            name.as_ptr(),
            buf.as_mut_ptr().cast(),
            buf.len(),
        )
    };
    if n <= 0 {
        return vec![];
    }
    String::from_utf8_lossy(&buf[..n as usize])
        .split(',')
        .map(|s| s.trim().to_string())
        .filter(|s| !s.is_empty())
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn clone_keeps_content_and_holes() {
        let d = std::env::temp_dir().join(format!("vmctl-clone-{}", std::process::id()));
        fs::create_dir_all(&d).unwrap();
        let src = d.join("a.vol");
        let mut f = fs::File::create(&src).unwrap();
        f.set_len(1 << 22).unwrap();
        f.seek(SeekFrom::Start(1 << 20)).unwrap();
        f.write_all(b"hello").unwrap();
        drop(f);
        clone_volume(&src, &d.join("b.vol")).unwrap();
        assert_eq!(fs::read(&src).unwrap(), fs::read(d.join("b.vol")).unwrap());
        assert!(
            clone_volume(&src, &d.join("b.vol")).is_err(),
            "must not overwrite"
        );
        fs::remove_dir_all(&d).unwrap();
    }

    #[test]
    fn images_are_checked() {
        let d = std::env::temp_dir().join(format!("vmctl-img-{}", std::process::id()));
        fs::create_dir_all(&d).unwrap();
        assert!(read_image(&d.join("nope"), None)
            .unwrap_err()
            .to_string()
            .contains("no such directory"));
        fs::write(
            d.join("image.toml"),
            "kernel = \"vmlinuz\"\ncmdline = \"console=ttyS0\"\n",
        )
        .unwrap();
        assert!(read_image(&d, None)
            .unwrap_err()
            .to_string()
            .contains("no volumes"));
        fs::write(d.join("root.vol"), b"x").unwrap();
        assert!(read_image(&d, None)
            .unwrap_err()
            .to_string()
            .contains("no kernel"));
        fs::write(d.join("vmlinuz"), b"k").unwrap();
        let i = read_image(&d, None).unwrap();
        assert_eq!(i.volumes, vec![d.join("root.vol")]);
        assert_eq!(i.boot.cmdline, "console=ttyS0");
        assert!(read_image(&d, Some(&["data.vol".into()]))
            .unwrap_err()
            .to_string()
            .contains("no volume data.vol"));
        fs::remove_dir_all(&d).unwrap();
    }
}
