//! Any fares file: loading answers Ok or a named error, never a panic, and a loaded
//! table prices every pair of its stations, incomplete journeys and a rider's trips, at
//! any time (the calendar's edges included), without a panic.
#![no_main]

use fareway::clock::UnixMillis;
use fareway::fares::{FareTable, Mode, RiderTotals, Trip};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else { return };
    let Ok(table) = FareTable::from_toml(text) else { return };
    let times = [0, 1_000, 1_800_000_000_000, 253_402_300_799_999, u64::MAX];
    let mut totals = RiderTotals::default();
    for time in times.map(UnixMillis) {
        for from in [0, 1, 100, 101, 202, u32::MAX] {
            for to in [0, 1, 100, 101, 202, u32::MAX] {
                let _ = table.metro_fare(from, to, 1_000, time);
            }
            let _ = table.entry_without_exit_fare(from, time);
            let _ = table.exit_without_entry_fare(from, time);
        }
        let _ = table.day_start(time);
        totals.start(table.periods(time));
        for mode in [Mode::Metro, Mode::Bus] {
            let trip = Trip { base: table.max_fare, mode, started_at: time, incomplete: false, concessions: 0x07 };
            let _ = table.charge(&trip, &mut totals);
        }
    }
    let _ = table.bus_fare(501);
});
