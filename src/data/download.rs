//! `convnets data download`: the official files, md5-checked, written atomically.

use std::io::Read;
use std::path::Path;

use super::FILES;

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

fn fetch(url: &str) -> Result<Vec<u8>, String> {
    let response = ureq::get(url).call().map_err(|e| e.to_string())?;
    let mut body = Vec::new();
    response.into_body().into_reader().take(64 << 20).read_to_end(&mut body).map_err(|e| e.to_string())?;
    Ok(body)
}

/// Downloads the four files into `dir`, trying each mirror in turn; a file is written (atomically)
/// only once its md5 matches `md5` (the official sums by default). Files already present with
/// the right sum are kept. Reports progress through `log`.
pub fn download(dir: &Path, mirrors: &[String], md5: &[&str; 4], mut log: impl FnMut(&str)) -> anyhow::Result<()> {
    use md5::Digest;
    std::fs::create_dir_all(dir).map_err(|e| anyhow::anyhow!("cannot create {}: {e}", dir.display()))?;
    let hex = |bytes: &[u8]| format!("{:x}", md5::Md5::digest(bytes));
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
            match fetch(&url) {
                Ok(bytes) if hex(&bytes) == *expected => {
                    crate::weights::write_atomic(&path, &bytes)
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
