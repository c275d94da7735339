//! Layer unpacking (tar + whiteouts, plain/gzip/zstd) into a temp dir: never panics, never
//! writes outside the destination, stops at the size limit. The first byte picks the
//! compression. Run as root (ownership, device nodes), like the daemon.
#![no_main]

use std::path::Path;

use crius::image::unpack::{unpack_layer_limited, Compression, Limits};
use libfuzzer_sys::fuzz_target;

fn names(dir: &Path) -> Vec<String> {
    let mut v: Vec<String> = std::fs::read_dir(dir)
        .map(|rd| {
            rd.flatten()
                .map(|e| e.file_name().to_string_lossy().into_owned())
                .collect()
        })
        .unwrap_or_default();
    v.sort();
    v
}

fuzz_target!(|data: &[u8]| {
    let Some((&first, layer)) = data.split_first() else {
        return;
    };
    let compression = match first % 3 {
        0 => Compression::None,
        1 => Compression::Gzip,
        _ => Compression::Zstd,
    };
    let tmp = tempfile::tempdir().expect("temp dir");
    let dest = tmp.path().join("layer");
    let outside = tmp.path().join("outside");
    std::fs::create_dir(&dest).expect("dest");
    std::fs::create_dir(&outside).expect("outside");
    let victim = outside.join("victim");
    std::fs::write(&victim, b"original").expect("victim");
    let limits = Limits {
        layer: 64 << 20,
        image: None,
    };
    let _ = unpack_layer_limited(layer, compression, &dest, &limits);
    assert_eq!(names(tmp.path()), ["layer", "outside"], "wrote beside dest");
    assert_eq!(names(&outside), ["victim"], "wrote outside dest");
    assert_eq!(std::fs::read(&victim).expect("victim"), b"original");
    // Nothing hard-linked to the victim either.
    use std::os::unix::fs::MetadataExt;
    assert_eq!(std::fs::metadata(&victim).expect("victim").nlink(), 1);
});
