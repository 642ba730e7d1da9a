//! `uniffi-bindgen generate --library target/debug/libsca_mobile.so --language python|kotlin|swift
//! --out-dir OUT` for the UniFFI version pinned in the workspace (see scripts/mobile.sh).

fn main() {
    uniffi::uniffi_bindgen_main()
}
