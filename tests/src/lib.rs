//! Black-box tests live in blackbox/.
