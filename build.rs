//! How the `trackside` binary is linked.
//!
//! Its position-independent code carries about 35,000 relative
//! relocations. As a table of RELA entries they are 0.8 MB that the loader
//! reads at every start and that stay in the process's memory; packed
//! (`DT_RELR`) they are 10 KB (docs/BENCHMARKS.md). A packed binary needs
//! glibc 2.36 or later where it runs, so they are asked for only when the
//! build is for the machine it is built on and that machine's glibc has
//! them. A binary meant for older machines is built with
//! `TRACKSIDE_PORTABLE_BUILD=1`.

fn main() {
    println!("cargo:rerun-if-changed=build.rs");
    println!("cargo:rerun-if-env-changed=TRACKSIDE_PORTABLE_BUILD");
    let target = std::env::var("TARGET").unwrap_or_default();
    let host = std::env::var("HOST").unwrap_or_default();
    let portable = std::env::var_os("TRACKSIDE_PORTABLE_BUILD").is_some_and(|v| !v.is_empty() && v != "0");
    if !portable && target == host && target.ends_with("-linux-gnu") && glibc_has_relr() {
        println!("cargo:rustc-link-arg-bins=-Wl,-z,pack-relative-relocs");
    }
}

/// Whether the glibc this build runs on is 2.36 or later.
#[cfg(all(target_os = "linux", target_env = "gnu"))]
fn glibc_has_relr() -> bool {
    unsafe extern "C" {
        fn gnu_get_libc_version() -> *const std::ffi::c_char;
    }
    // SAFETY: glibc returns a pointer to a static, NUL-terminated string.
    let version = unsafe { std::ffi::CStr::from_ptr(gnu_get_libc_version()) };
    let mut parts = version
        .to_str()
        .unwrap_or("")
        .split('.')
        .map(|p| p.parse::<u32>().unwrap_or(0));
    let (major, minor) = (parts.next().unwrap_or(0), parts.next().unwrap_or(0));
    (major, minor) >= (2, 36)
}

#[cfg(not(all(target_os = "linux", target_env = "gnu")))]
fn glibc_has_relr() -> bool {
    false
}
