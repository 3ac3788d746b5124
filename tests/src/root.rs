//! Tests that need root (netns, BPF) skip loudly, never silently, when run unprivileged.

/// Whether the process runs as root (effective uid 0).
pub fn is_root() -> bool {
    // SAFETY: geteuid has no preconditions and cannot fail.
    unsafe { libc::geteuid() == 0 }
}

/// Prints a loud SKIP banner for `test` straight to stderr, bypassing the test harness's
/// output capture so it shows even for passing tests.
pub fn print_skip(test: &str, reason: &str) {
    use std::io::Write as _;
    let line = "!".repeat(78);
    let _ = writeln!(
        std::io::stderr().lock(),
        "\n{line}\n!!! SKIPPED {test}: {reason}\n!!! This test did NOT run. Run the tests as root \
         to run it.\n{line}"
    );
}

/// Name of the function the macro expands in (for [`require_root!`]'s banner).
#[doc(hidden)]
pub fn type_name_of<T>(_: T) -> &'static str {
    std::any::type_name::<T>()
}

/// Returns early from the calling test, after a loud SKIP banner, unless running as root.
/// `require_root!()` in tests returning `()`, `require_root!(Ok(()))` in tests returning
/// `Result`.
#[macro_export]
macro_rules! require_root {
    () => {
        $crate::require_root!(())
    };
    ($skipped:expr) => {
        if !$crate::root::is_root() {
            fn here() {}
            let name = $crate::root::type_name_of(here);
            $crate::root::print_skip(
                name.strip_suffix("::here").unwrap_or(name),
                "needs root (network namespaces, BPF)",
            );
            return $skipped;
        }
    };
}
