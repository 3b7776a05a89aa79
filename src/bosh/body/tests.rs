//! Table tests for the body parser (BOSH-S-02, BOSH-S-07, BOSH-S-17, BOSH-R-24, XBOSH-14).
