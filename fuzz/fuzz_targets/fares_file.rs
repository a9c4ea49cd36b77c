//! Any fares file: loading answers Ok or a named error, never a panic, and a loaded
//! table prices every pair of its stations without a panic.
#![no_main]

use fareway::fares::FareTable;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else { return };
    let Ok(table) = FareTable::from_toml(text) else { return };
    for from in [0, 1, 100, 101, 202, u32::MAX] {
        for to in [0, 1, 100, 101, 202, u32::MAX] {
            let _ = table.metro_fare(from, to, 1_000);
        }
    }
    let _ = table.bus_fare(501);
});
