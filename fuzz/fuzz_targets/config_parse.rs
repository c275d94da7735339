//! Config parsing, layering and validation of an arbitrary main file: never panics; a refusal
//! names its file. A loaded config prints and re-loads to the same config.
#![no_main]

use crius::config::{self, Sources};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let tmp = tempfile::tempdir().expect("temp dir");
    let file = tmp.path().join("crius.toml");
    std::fs::write(&file, data).expect("write");
    let sources = Sources {
        file: file.clone(),
        file_required: true,
        dir: tmp.path().join("crius.d"),
        overrides: Vec::new(),
    };
    match config::load(&sources) {
        Ok(cfg) => {
            std::fs::write(&file, cfg.to_toml()).expect("write");
            let again = config::load(&sources).expect("printed config loads");
            assert_eq!(again, cfg, "print/load round trip");
        }
        Err(e) => {
            let _ = e.to_string();
        }
    }
});
