//! Any server configuration file: parsing and checking answer a configuration or a named
//! error, never a panic.
#![no_main]

use fareway::server::config::ServerConfig;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else { return };
    if let Ok(config) = ServerConfig::from_toml(text) {
        let _ = config.check();
    }
});
