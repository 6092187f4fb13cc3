//! SNMP notifications: v1 Trap-PDU, SNMPv2-Trap-PDU and InformRequest-PDU, in v1, v2c and
//! unencrypted v3 messages.
//!
//! BER decoding is the `snmp-parser` crate's; this module only maps its output onto the wire
//! types. Every trap is presented as SNMPv2 presents it:
//!
//! - v2c/v3: `oid` is the value of `snmpTrapOID.0` and `varbinds` are the PDU's, in order (so
//!   they start with `sysUpTime.0` and `snmpTrapOID.0`); `agent` is the packet's source.
//! - v1 (RFC 3584 §3.1): `oid` is `snmpTraps.(generic-trap + 1)` for the six generic traps and
//!   `enterprise.0.specific-trap` for enterpriseSpecific; `varbinds` are `sysUpTime.0`
//!   (time-stamp), `snmpTrapOID.0`, the PDU's own, then `snmpTrapAddress.0` (agent-addr) and
//!   `snmpTrapEnterprise.0` (enterprise); `agent` is agent-addr (the source if it is 0.0.0.0).
//!   `snmpTrapCommunity.0` is left out on purpose: the community is a credential and events
//!   cross the WAN. A non-UTF-8 community makes snmp-parser refuse the message (undecodable).
//!
//! Undecodable: anything the parser refuses, PDUs that are not notifications, a v1 Trap-PDU
//! inside a v2c message, v2 notifications without `snmpTrapOID.0`, encrypted v3 (the poller
//! holds no keys), OID arcs beyond 32 bits (SMI allows none).

use std::net::IpAddr;

use opha_common::wire::{Bytes, EventKind, Oid, Severity, SnmpVersion, Trap, VarBind, VarValue};
use snmp_parser::{
    NetworkAddress, ObjectSyntax, PduType, ScopedPduData, SnmpGenericMessage, SnmpPdu,
    SnmpVariable, VarBindValue, parse_snmp_generic_message,
};

use super::{Decoded, Undecodable};

/// `sysUpTime.0`
pub const SYS_UPTIME_0: &[u32] = &[1, 3, 6, 1, 2, 1, 1, 3, 0];
/// `snmpTrapOID.0`
pub const SNMP_TRAP_OID_0: &[u32] = &[1, 3, 6, 1, 6, 3, 1, 1, 4, 1, 0];
/// `snmpTrapEnterprise.0`
pub const SNMP_TRAP_ENTERPRISE_0: &[u32] = &[1, 3, 6, 1, 6, 3, 1, 1, 4, 3, 0];
/// `snmpTrapAddress.0` (SNMP-COMMUNITY-MIB)
pub const SNMP_TRAP_ADDRESS_0: &[u32] = &[1, 3, 6, 1, 6, 3, 18, 1, 3, 0];
/// `snmpTraps`: the generic traps are its children 1..=6.
pub const SNMP_TRAPS: &[u32] = &[1, 3, 6, 1, 6, 3, 1, 1, 5];

/// Names of the generic traps, `snmpTraps.1` ..= `snmpTraps.6`.
const GENERIC_NAMES: [&str; 6] = [
    "coldStart",
    "warmStart",
    "linkDown",
    "linkUp",
    "authenticationFailure",
    "egpNeighborLoss",
];

/// Decodes one notification datagram sent from `from`.
pub(crate) fn decode(payload: &[u8], from: IpAddr) -> Result<Decoded, Undecodable> {
    let (_rest, msg) = parse_snmp_generic_message(payload)
        .map_err(|e| Undecodable(format!("not a valid SNMP message: {e}")))?;
    // Bytes after the message are ignored: one datagram carries one message.
    let trap = match &msg {
        SnmpGenericMessage::V1(m) => match &m.pdu {
            SnmpPdu::TrapV1(pdu) => v1_trap(pdu, from)?,
            other => return Err(not_a_notification(SnmpVersion::V1, other)),
        },
        SnmpGenericMessage::V2(m) => v2_notification(SnmpVersion::V2c, &m.pdu, from)?,
        SnmpGenericMessage::V3(m) => match &m.data {
            ScopedPduData::Plaintext(scoped) => {
                v2_notification(SnmpVersion::V3, &scoped.data, from)?
            }
            ScopedPduData::Encrypted(_) => {
                return Err(Undecodable(
                    "SNMPv3 notification is encrypted (authPriv); the poller holds no keys".into(),
                ));
            }
        },
    };
    let severity = severity(&trap.oid);
    let details = details(&trap, from);
    Ok(Decoded {
        kind: EventKind::Trap(trap),
        severity,
        details,
    })
}

fn not_a_notification(version: SnmpVersion, pdu: &SnmpPdu<'_>) -> Undecodable {
    Undecodable(format!(
        "SNMP {version:?} {:?} PDU is not a notification (Trap, TrapV2 or InformRequest)",
        pdu.pdu_type()
    ))
}

/// RFC 3584 §3.1: a v1 Trap-PDU as the SNMPv2 notification it stands for.
fn v1_trap(pdu: &snmp_parser::SnmpTrapPdu<'_>, from: IpAddr) -> Result<Trap, Undecodable> {
    let enterprise = oid(&pdu.enterprise, "enterprise")?;
    let generic = pdu.generic_trap.0;
    let trap_oid = match generic {
        0..=5 => {
            let mut arcs = SNMP_TRAPS.to_vec();
            arcs.push(u32::from(generic) + 1);
            Oid(arcs)
        }
        6 => {
            let mut arcs = enterprise.0.clone();
            arcs.push(0);
            arcs.push(pdu.specific_trap);
            Oid(arcs)
        }
        // snmp-parser keeps only the low byte of generic-trap; anything past 6 is invalid
        // either way (RFC 1157 defines 0..=6).
        g => return Err(Undecodable(format!("v1 generic-trap {g} is not 0..=6"))),
    };
    let NetworkAddress::IPv4(agent) = pdu.agent_addr;
    let mut varbinds = Vec::with_capacity(pdu.var.len() + 4);
    varbinds.push(VarBind {
        oid: Oid::from(SYS_UPTIME_0),
        value: VarValue::TimeTicks(pdu.timestamp),
    });
    varbinds.push(VarBind {
        oid: Oid::from(SNMP_TRAP_OID_0),
        value: VarValue::ObjectId(trap_oid.clone()),
    });
    for v in &pdu.var {
        varbinds.push(varbind(v)?);
    }
    varbinds.push(VarBind {
        oid: Oid::from(SNMP_TRAP_ADDRESS_0),
        value: VarValue::IpAddress(agent),
    });
    varbinds.push(VarBind {
        oid: Oid::from(SNMP_TRAP_ENTERPRISE_0),
        value: VarValue::ObjectId(enterprise),
    });
    Ok(Trap {
        version: SnmpVersion::V1,
        inform: false,
        oid: trap_oid,
        // Some agents send 0.0.0.0 (they do not know their address): the sender is the agent.
        agent: if agent.is_unspecified() {
            from
        } else {
            IpAddr::V4(agent)
        },
        varbinds,
    })
}

/// An SNMPv2-Trap or InformRequest PDU (v2c or v3).
fn v2_notification(
    version: SnmpVersion,
    pdu: &SnmpPdu<'_>,
    from: IpAddr,
) -> Result<Trap, Undecodable> {
    let generic = match pdu {
        SnmpPdu::Generic(g) if g.pdu_type == PduType::TrapV2 => g,
        SnmpPdu::Generic(g) if g.pdu_type == PduType::InformRequest => g,
        SnmpPdu::TrapV1(_) => {
            return Err(Undecodable(format!(
                "v1 Trap-PDU inside an SNMP {version:?} message"
            )));
        }
        other => return Err(not_a_notification(version, other)),
    };
    let varbinds = generic
        .var
        .iter()
        .map(varbind)
        .collect::<Result<Vec<_>, _>>()?;
    // RFC 3416 §4.2.6 puts snmpTrapOID.0 second; found anywhere, for senders that misorder.
    let trap_oid = varbinds
        .iter()
        .find(|vb| vb.oid.arcs() == SNMP_TRAP_OID_0)
        .ok_or_else(|| {
            Undecodable(format!(
                "SNMP {version:?} notification without snmpTrapOID.0"
            ))
        })?;
    let VarValue::ObjectId(trap_oid) = &trap_oid.value else {
        return Err(Undecodable(format!(
            "snmpTrapOID.0 is not an OBJECT IDENTIFIER but {}",
            trap_oid.value.to_text()
        )));
    };
    Ok(Trap {
        version,
        inform: generic.pdu_type == PduType::InformRequest,
        oid: trap_oid.clone(),
        agent: from,
        varbinds,
    })
}

fn oid(o: &snmp_parser::Oid<'_>, what: &str) -> Result<Oid, Undecodable> {
    let arcs = o
        .iter()
        .ok_or_else(|| Undecodable(format!("{what}: OID arc beyond 64 bits")))?;
    arcs.map(u32::try_from)
        .collect::<Result<Vec<u32>, _>>()
        .map(Oid)
        .map_err(|_| Undecodable(format!("{what}: OID arc beyond 32 bits (SMI allows none)")))
}

fn varbind(v: &SnmpVariable<'_>) -> Result<VarBind, Undecodable> {
    let name = oid(&v.oid, "varbind name")?;
    let value = match &v.val {
        VarBindValue::Value(syntax) => value(syntax, &name)?,
        VarBindValue::Unspecified => VarValue::Null,
        VarBindValue::NoSuchObject => VarValue::NoSuchObject,
        VarBindValue::NoSuchInstance => VarValue::NoSuchInstance,
        VarBindValue::EndOfMibView => VarValue::EndOfMibView,
    };
    Ok(VarBind { oid: name, value })
}

/// Maps snmp-parser's values onto the wire's. Syntaxes the wire has no variant for (ASN.1 BIT
/// STRING from v1 SMI, NsapAddress, unknown tags) keep their content octets as `Opaque`.
fn value(syntax: &ObjectSyntax<'_>, name: &Oid) -> Result<VarValue, Undecodable> {
    Ok(match syntax {
        ObjectSyntax::Number(n) => VarValue::Integer(i64::from(*n)),
        ObjectSyntax::String(s) => VarValue::OctetString(Bytes::from(*s)),
        ObjectSyntax::Object(o) => VarValue::ObjectId(oid(o, &format!("value of {name}"))?),
        ObjectSyntax::BitString(b) => VarValue::Opaque(Bytes::from(b.data.as_ref())),
        ObjectSyntax::Empty => VarValue::Null,
        ObjectSyntax::UnknownSimple(any) => VarValue::Opaque(Bytes::from(any.data)),
        ObjectSyntax::IpAddress(NetworkAddress::IPv4(a)) => VarValue::IpAddress(*a),
        ObjectSyntax::Counter32(c) => VarValue::Counter32(*c),
        ObjectSyntax::Gauge32(g) => VarValue::Gauge32(*g),
        ObjectSyntax::TimeTicks(t) => VarValue::TimeTicks(*t),
        ObjectSyntax::Opaque(o) => VarValue::Opaque(Bytes::from(*o)),
        ObjectSyntax::NsapAddress(n) => VarValue::Opaque(Bytes::from(*n)),
        ObjectSyntax::Counter64(c) => VarValue::Counter64(*c),
        // RFC 2578: Unsigned32 is indistinguishable from Gauge32.
        ObjectSyntax::UInteger32(u) => VarValue::Gauge32(*u),
        ObjectSyntax::UnknownApplication(any) => VarValue::Opaque(Bytes::from(any.data)),
    })
}

/// The generic trap's name when `oid` is one of `snmpTraps.1..=6`.
pub fn generic_name(oid: &Oid) -> Option<&'static str> {
    match oid.arcs().split_last() {
        Some((&last, prefix)) if prefix == SNMP_TRAPS && (1..=6).contains(&last) => {
            GENERIC_NAMES.get(last as usize - 1).copied()
        }
        _ => None,
    }
}

/// The documented mapping (see the module [`crate::decode`]).
pub fn severity(oid: &Oid) -> Severity {
    match generic_name(oid) {
        Some("linkDown" | "egpNeighborLoss") => Severity::Major,
        Some("authenticationFailure") => Severity::Minor,
        Some("coldStart" | "warmStart") => Severity::Warning,
        Some("linkUp") => Severity::Info,
        _ => Severity::Warning,
    }
}

/// e.g. `v2c trap linkDown (1.3.6.1.6.3.1.1.5.3) from 198.18.0.7: 1.3.6.1.2.1.2.2.1.1.3=3`.
/// `sysUpTime.0` and `snmpTrapOID.0` are left out of the text (they are in the varbinds).
fn details(trap: &Trap, from: IpAddr) -> String {
    use std::fmt::Write;
    let version = match trap.version {
        SnmpVersion::V1 => "v1",
        SnmpVersion::V2c => "v2c",
        SnmpVersion::V3 => "v3",
    };
    let what = if trap.inform { "inform" } else { "trap" };
    let mut s = format!("{version} {what} ");
    match generic_name(&trap.oid) {
        Some(name) => {
            let _ = write!(s, "{name} ({})", trap.oid);
        }
        None => {
            let _ = write!(s, "{}", trap.oid);
        }
    }
    let _ = write!(s, " from {from}");
    if trap.agent != from {
        let _ = write!(s, " (agent {})", trap.agent);
    }
    let mut first = true;
    for vb in &trap.varbinds {
        let a = vb.oid.arcs();
        if a == SYS_UPTIME_0 || a == SNMP_TRAP_OID_0 {
            continue;
        }
        s.push_str(if first { ": " } else { ", " });
        first = false;
        let _ = write!(s, "{}={}", vb.oid, vb.value.to_text());
    }
    s
}
