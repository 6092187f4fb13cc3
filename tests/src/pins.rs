//! Guards that remove a test instance's pinned maps and links, also when the test fails (being written).
