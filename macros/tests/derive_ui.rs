//! `#[derive(Event)]` accepts what can work and says how to fix what
//! cannot, pointing at the user's code.

#[test]
fn derive_event_ui() {
    let cases = trybuild::TestCases::new();
    cases.pass("tests/ui/pass-*.rs");
    cases.compile_fail("tests/ui/[!p]*.rs");
}
