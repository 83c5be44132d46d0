//! Platform API tests.
