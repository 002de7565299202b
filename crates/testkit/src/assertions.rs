//! Assertions on statuses: the platform's error model promises a code, an `ErrorInfo` reason
//! and, for bad input, a `BadRequest` naming every bad field.

use tonic::{Code, Status};
use tonic_types::StatusExt;

/// Asserts INVALID_ARGUMENT with a BadRequest naming exactly `fields` (in any order).
#[track_caller]
pub fn assert_violations(status: &Status, fields: &[&str]) {
    assert_eq!(status.code(), Code::InvalidArgument, "{status:?}");
    let bad = status
        .get_details_bad_request()
        .unwrap_or_else(|| panic!("no BadRequest details in {status:?}"));
    let mut got: Vec<&str> = bad
        .field_violations
        .iter()
        .map(|v| v.field.as_str())
        .collect();
    got.sort_unstable();
    got.dedup();
    let mut want = fields.to_vec();
    want.sort_unstable();
    assert_eq!(got, want, "violations of {status:?}");
    let info = status
        .get_details_error_info()
        .unwrap_or_else(|| panic!("no ErrorInfo in {status:?}"));
    assert_eq!(info.reason, "FIELD_VIOLATION");
}

/// Asserts `code` with an ErrorInfo whose reason is `reason`.
#[track_caller]
pub fn assert_code(status: &Status, code: Code, reason: &str) {
    assert_eq!(status.code(), code, "{status:?}");
    let info = status
        .get_details_error_info()
        .unwrap_or_else(|| panic!("no ErrorInfo in {status:?}"));
    assert_eq!(info.reason, reason, "{status:?}");
}
