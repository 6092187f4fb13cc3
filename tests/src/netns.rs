//! Network namespaces, veth pairs and real device daemons for integration tests (being written).
