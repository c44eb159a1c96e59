//! Fuzz target: any input either fails to parse with an error or parses, writes back
//! byte-identical, and yields typed values (or errors) without panicking.

#![no_main]

use libfuzzer_sys::fuzz_target;
use pvefleet_proxmox::ConfigFile;

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else { return };
    if let Ok(config) = ConfigFile::parse(text) {
        assert_eq!(config.write(), text);
        for section in &config.sections {
            let _ = section.nets();
            let _ = section.rootfs();
            let _ = section.mount_points();
            let _ = section.features();
        }
        let canonical = config.write_canonical();
        let again = ConfigFile::parse(&canonical).expect("canonical output parses");
        assert_eq!(again.write_canonical(), canonical);
    }
});
