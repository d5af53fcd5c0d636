//! `convnets data download`: the official files, md5-checked, written atomically.

use std::io::Read;
use std::path::Path;

use super::{Cifar, FILES};

/// Where `convnets data download` looks, in order: the official bucket over HTTPS, then the
/// copy in the Fashion-MNIST repository. `$CONVNETS_MIRRORS` (comma-separated base URLs)
/// replaces the list.
pub const MIRRORS: [&str; 2] = [
    "https://fashion-mnist.s3.eu-central-1.amazonaws.com/",
    "https://raw.githubusercontent.com/zalandoresearch/fashion-mnist/master/data/fashion/",
];

/// md5 of the official `.gz` files, as published, in [`FILES`] order.
pub const OFFICIAL_MD5: [&str; 4] = [
    "8d4fb7e6c68d591d4c3dfef9ec88bf0d",
    "25c81989df183df01b3e8a0aad5dffbe",
    "bef4ecab320f06d8554ea6380940ec79",
    "bb300cfdad3c16e7a12a480ee83cd310",
];

/// The mirrors to use: `$CONVNETS_MIRRORS` or [`MIRRORS`].
pub fn mirrors() -> Vec<String> {
    match std::env::var("CONVNETS_MIRRORS") {
        Ok(list) if !list.trim().is_empty() => list.split(',').map(|m| m.trim().to_string()).collect(),
        _ => MIRRORS.iter().map(|m| m.to_string()).collect(),
    }
}

/// The body at `url`, at most `limit` bytes (the files are known: more is not one of them).
fn fetch(url: &str, limit: u64) -> Result<Vec<u8>, String> {
    let response = ureq::get(url).call().map_err(|e| e.to_string())?;
    let mut body = Vec::new();
    response.into_body().into_reader().take(limit).read_to_end(&mut body).map_err(|e| e.to_string())?;
    Ok(body)
}

fn md5_hex(bytes: &[u8]) -> String {
    use md5::Digest;
    format!("{:x}", md5::Md5::digest(bytes))
}

/// Downloads the four files into `dir`, trying each mirror in turn; a file is written (atomically)
/// only once its md5 matches `md5` (the official sums by default). Files already present with
/// the right sum are kept. Reports progress through `log`.
pub fn download(dir: &Path, mirrors: &[String], md5: &[&str; 4], mut log: impl FnMut(&str)) -> anyhow::Result<()> {
    std::fs::create_dir_all(dir).map_err(|e| anyhow::anyhow!("cannot create {}: {e}", dir.display()))?;
    let hex = md5_hex;
    for (name, expected) in FILES.iter().zip(md5) {
        let file = format!("{name}.gz");
        let path = dir.join(&file);
        if std::fs::read(&path).is_ok_and(|b| hex(&b) == *expected) {
            log(&format!("{file}: already present, md5 ok"));
            continue;
        }
        let mut failures = Vec::new();
        let mut done = false;
        for mirror in mirrors {
            let url = format!("{}/{file}", mirror.trim_end_matches('/'));
            match fetch(&url, 64 << 20) {
                Ok(bytes) if hex(&bytes) == *expected => {
                    crate::atomic::write_atomic(&path, &bytes)
                        .map_err(|e| anyhow::anyhow!("cannot write {}: {e}", path.display()))?;
                    log(&format!("{file}: {} bytes from {url}, md5 ok", bytes.len()));
                    done = true;
                    break;
                }
                Ok(bytes) => failures.push(format!("{url}: md5 {} is not {expected}", hex(&bytes))),
                Err(e) => failures.push(format!("{url}: {e}")),
            }
        }
        if !done {
            anyhow::bail!("could not download {file}:\n  {}", failures.join("\n  "));
        }
    }
    Ok(())
}

/// The official CIFAR archive (binary version) and its published md5.
pub fn cifar_archive(cifar: Cifar) -> (&'static str, &'static str) {
    match cifar {
        Cifar::Ten => ("https://www.cs.toronto.edu/~kriz/cifar-10-binary.tar.gz", "c32a1d4ab5d03f1284b67883e8d87530"),
        Cifar::Hundred => {
            ("https://www.cs.toronto.edu/~kriz/cifar-100-binary.tar.gz", "03b5dce01913d631647c71ecec9e9cb8")
        }
    }
}

/// Downloads a CIFAR archive from `url` into `dir` and unpacks it there, once its md5 matches
/// `md5`: the files appear all at once (unpacked beside, then renamed), or not at all. A
/// folder already holding them is kept.
pub fn download_cifar(dir: &Path, cifar: Cifar, url: &str, md5: &str, mut log: impl FnMut(&str)) -> anyhow::Result<()> {
    if let Some(found) = cifar.find(dir) {
        log(&format!("{}: already present", found.display()));
        return Ok(());
    }
    std::fs::create_dir_all(dir).map_err(|e| anyhow::anyhow!("cannot create {}: {e}", dir.display()))?;
    let archive = fetch(url, 256 << 20).map_err(|e| anyhow::anyhow!("could not download {url}: {e}"))?;
    let sum = md5_hex(&archive);
    anyhow::ensure!(sum == md5, "could not download {url}: md5 {sum} is not {md5}");
    log(&format!("{} bytes from {url}, md5 ok", archive.len()));
    let partial = dir.join(format!(".unpacking-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&partial);
    let unpacked = (|| -> std::io::Result<()> {
        std::fs::create_dir_all(&partial)?;
        // `unpack_in` refuses entries that would land outside `partial`.
        let mut tar = tar::Archive::new(flate2::read::GzDecoder::new(archive.as_slice()));
        for entry in tar.entries()? {
            entry?.unpack_in(&partial)?;
        }
        Ok(())
    })();
    let result = unpacked.map_err(|e| anyhow::anyhow!("{url}: cannot unpack: {e}")).and_then(|()| {
        let folder =
            cifar.find(&partial).ok_or_else(|| anyhow::anyhow!("{url}: the archive holds no {cifar:?} files"))?;
        let name = folder.file_name().map(|n| n.to_os_string()).unwrap_or_default();
        let target = if folder == partial { dir.join(cifar.folder()) } else { dir.join(name) };
        std::fs::rename(&folder, &target).map_err(|e| anyhow::anyhow!("cannot move into {}: {e}", target.display()))?;
        log(&format!("unpacked into {}", target.display()));
        Ok(())
    });
    let _ = std::fs::remove_dir_all(&partial);
    result
}
