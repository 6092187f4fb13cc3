//! Parsers over direct packet access. Every offset is checked against a fixed bound before it is
//! used, so that the verifier can prove every access and every loop is bounded.

pub mod headers;
pub mod packet;
pub mod snmp;
