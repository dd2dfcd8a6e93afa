//! The agent end to end against the moto emulator (behind the project's shim), over HTTP, with
//! the real AWS SDK adapters, the DynamoDB store and the SQS runtime. The tests play AWS's part
//! where moto cannot: CloudWatch values (PutMetricData), scripted faults.
//!
//! Needs `.venv` (scripts/setup-python). Each test starts its own emulator process. The harness
//! and the tests, one file per subject, are in `tests/emulator/`.

mod emulator;
