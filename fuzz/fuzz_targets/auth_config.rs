//! The `--auth-config` TOML: any text is accepted or refused with a
//! configuration error, never a panic.

#![no_main]

use libfuzzer_sys::fuzz_target;
use notes_server::config::auth::AuthFile;

fuzz_target!(|text: &str| {
    if let Ok(file) = toml::from_str::<AuthFile>(text) {
        let _ = file.settings();
    }
});
