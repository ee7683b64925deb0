//! The configuration parser and validation on arbitrary text: no panic, and what parses
//! prints back as TOML that parses to the same configuration.

#![no_main]

use libfuzzer_sys::fuzz_target;
use vigil::config::Config;

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else { return };
    let Ok(config) = Config::parse(text) else { return };
    let valid = config.validate().is_ok();
    let printed = config.to_toml();
    let back = Config::parse(&printed).unwrap_or_else(|e| panic!("own output does not parse: {e}\n{printed}"));
    assert_eq!(back.to_toml(), printed, "round trip changes the configuration");
    assert_eq!(back.validate().is_ok(), valid, "round trip changes validity");
});
