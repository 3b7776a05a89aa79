//! Table tests for `relay`.

use super::*;
