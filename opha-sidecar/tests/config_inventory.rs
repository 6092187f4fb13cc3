//! The node inventory: the example loads, lookups resolve tenants from prefixes, and bad
//! inputs name their line (CSV) or index (JSON) and field.

use std::{net::IpAddr, path::Path};

use opha_common::{
    node::NodeKey,
    wire::{NodeRef, TenantId},
};
use opha_sidecar::{
    inventory::{Format, Inventory, InventoryError},
    loader::MonitoredPrefix,
};

fn prefixes() -> Vec<MonitoredPrefix> {
    [
        "198.18.0.0/15=1",
        "198.19.128.0/17=3",
        "100@198.18.0.0/24=2",
        "2001:db8::/32=1",
    ]
    .iter()
    .map(|s| s.parse().unwrap())
    .collect()
}

fn key(addr: &str, vlan: u16) -> NodeKey {
    NodeRef::new(vlan, addr.parse::<IpAddr>().unwrap(), None).key()
}

fn csv(text: &str) -> Result<Inventory, InventoryError> {
    Inventory::from_text(text, Format::Csv, "nodes.csv", &prefixes())
}

fn problems(r: Result<Inventory, InventoryError>) -> Vec<String> {
    match r {
        Ok(_) => panic!("inventory was accepted"),
        Err(e) => e.problems().iter().map(|p| p.to_string()).collect(),
    }
}

#[test]
fn example_inventory_resolves_names_groups_and_tenants() {
    let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("../examples/inventory.csv");
    let inv = Inventory::load(&path, &prefixes()).unwrap();
    assert_eq!(inv.len(), 11);
    let core = inv.get(&key("198.18.0.1", 0)).unwrap();
    assert_eq!(core.name, "chi-core-1");
    assert_eq!(core.group.as_deref(), Some("core"));
    assert_eq!(core.tenant, TenantId(1));
    // Same address on VLAN 100: another node, another tenant.
    let globex = inv.get(&key("198.18.0.1", 100)).unwrap();
    assert_eq!(
        (globex.name.as_str(), globex.tenant),
        ("globex-sw-1", TenantId(2))
    );
    // Empty tenant column: taken from the longest prefix (the /17 carve-out).
    assert_eq!(
        inv.get(&key("198.19.128.2", 0)).unwrap().tenant,
        TenantId(3)
    );
    assert_eq!(inv.get(&key("198.18.1.1", 0)).unwrap().tenant, TenantId(1));
    // Quoted field with a comma; empty group.
    let lab = inv.get(&key("198.18.9.9", 0)).unwrap();
    assert_eq!(
        (lab.name.as_str(), lab.group.as_deref()),
        ("chi-lab, rack 4", None)
    );
    assert_eq!(
        inv.get(&key("2001:db8::1", 0)).unwrap().name,
        "chi-core-1-v6"
    );
    assert!(inv.get(&key("198.18.0.99", 0)).is_none());
    let r = inv.node_ref(&key("198.18.0.2", 0));
    assert_eq!(r.name.as_deref(), Some("chi-core-2"));
    assert_eq!(r.addr.to_string(), "198.18.0.2");
    assert_eq!(inv.node_ref(&key("198.18.0.99", 0)).name, None);
    assert_eq!(
        inv.nodes_per_tenant(),
        vec![(TenantId(1), 7), (TenantId(2), 2), (TenantId(3), 2)]
    );
}

#[test]
fn json_inventory_is_the_same_lookup() {
    let text = r#"[
        {"name": "a", "address": "198.18.0.1", "tenant": 1, "group": "core"},
        {"name": "b", "address": "198.18.0.1", "vlan": 100},
        {"name": "c", "address": "::ffff:198.18.0.3"}
    ]"#;
    let inv = Inventory::from_text(text, Format::Json, "nodes.json", &prefixes()).unwrap();
    assert_eq!(inv.len(), 3);
    assert_eq!(
        inv.get(&key("198.18.0.1", 100)).unwrap().tenant,
        TenantId(2)
    );
    // An IPv4-mapped address is the IPv4 node.
    assert_eq!(inv.get(&key("198.18.0.3", 0)).unwrap().name, "c");
    assert_eq!(Format::detect(Path::new("x.json"), ""), Format::Json);
    assert_eq!(Format::detect(Path::new("x.txt"), "  [ {"), Format::Json);
    assert_eq!(Format::detect(Path::new("x"), "name,address"), Format::Csv);
}

#[test]
fn bad_csv_rows_name_line_and_field() {
    let text = "\
name,address,vlan,tenant,group
ok-1,198.18.0.1,0,1,core
bad-addr,198.18.0.300,0,1,core
bad-vlan,198.18.0.4,4095,1,core
bad-tenant,198.18.0.5,0,zero,core
,198.18.0.6,0,1,core
dup-addr,198.18.0.1,0,1,core
wrong-tenant,198.18.0.8,0,2,core
ok-1,198.18.0.9,0,,core
prefix,198.18.0.0/24,0,1,core
too,many,fields,here,now,extra
";
    let got = problems(csv(text));
    let want = [
        "line 3: address: \"198.18.0.300\" is not an IP address",
        "line 4: vlan: 4095 is not a VLAN id: use 0-4094",
        "line 5: tenant: \"zero\" is not a number",
        "line 6: name: is empty",
        "line 7: address: 198.18.0.1 on VLAN 0 is already line 2 (ok-1)",
        "line 8: tenant: 2 differs from tenant 1 of its prefix 198.18.0.0/15 on VLAN 0: a node's tenant comes from its prefix",
        "line 9: name: \"ok-1\" is already line 2 in tenant 1",
        "line 10: address: \"198.18.0.0/24\" is not an IP address (one node per row, not a prefix)",
        "line 11: 6 fields, the header has 5",
    ];
    assert_eq!(got, want);
    let shown = csv(text).unwrap_err().to_string();
    assert!(
        shown.starts_with("nodes.csv: 9 problems:\n  line 3: address:"),
        "{shown}"
    );
}

#[test]
fn csv_header_problems() {
    assert_eq!(
        problems(csv("name,addr,vlan\nx,198.18.0.1,0\n")),
        vec![
            "line 1: unknown column \"addr\" in the header (columns: name, address, vlan, tenant, group)",
            "line 1: the header has no \"address\" column (the first line must name the columns: name, address, vlan, tenant, group)",
        ]
    );
    // A file without a header: its first row is taken as one and refused.
    let got = problems(csv("core-1,198.18.0.1\n"));
    assert!(got[0].contains("unknown column \"core-1\""), "{got:?}");
    // Columns in another order, upper case, missing optional columns.
    let inv = csv("Address,NAME\n198.18.0.1,x\n").unwrap();
    assert_eq!(inv.get(&key("198.18.0.1", 0)).unwrap().name, "x");
}

#[test]
fn bad_json_names_index_and_field() {
    let json = |t: &str| Inventory::from_text(t, Format::Json, "nodes.json", &prefixes());
    assert_eq!(
        problems(json(
            r#"[{"name": "a", "address": "198.18.0.1", "vlan": 5000}]"#
        )),
        vec!["[0].vlan: 5000 is not a VLAN id: use 0-4094"]
    );
    let got = problems(json(
        r#"[{"name": "a", "address": "198.18.0.1"}, {"name": "b", "adress": "x"}]"#,
    ));
    assert_eq!(got.len(), 1);
    assert!(
        got[0].starts_with("[1].adress: unknown field `adress`"),
        "{got:?}"
    );
    assert!(got[0].contains("(line 1, column"), "{got:?}");
    let got = problems(json(r#"[{"name": "a", "address": 7}]"#));
    assert!(
        got[0].starts_with("[0].address: invalid type: integer `7`"),
        "{got:?}"
    );
    let got = problems(json(r#"[{"name": "a", "address": "198.18.0.1"}"#));
    assert!(got[0].contains("EOF"), "{got:?}");
    let got = problems(json(r#"[] trailing"#));
    assert!(got[0].contains("trailing characters"), "{got:?}");
}

#[test]
fn nodes_outside_the_prefixes_are_left_out_with_a_warning() {
    let inv = csv("name,address\nin,198.18.0.1\nout,203.0.113.1\nv6out,2001:db9::1\n").unwrap();
    assert_eq!(inv.len(), 1);
    assert_eq!(inv.warnings().len(), 2);
    assert!(
        inv.warnings()[0].contains("line 3: out (203.0.113.1 on VLAN 0) is in no monitored prefix")
    );
}

#[test]
fn without_prefixes_the_tenant_column_is_required() {
    let got = Inventory::from_text(
        "name,address,tenant\na,198.18.0.1,4\nb,198.18.0.2,\n",
        Format::Csv,
        "nodes.csv",
        &[],
    );
    assert_eq!(
        problems(got),
        vec!["line 3: tenant: is required when no monitored prefixes are given"]
    );
}

#[test]
fn long_lists_of_problems_are_cut() {
    let mut text = String::from("name,address\n");
    for i in 0..80 {
        text.push_str(&format!("n{i},not-an-ip\n"));
    }
    let err = csv(&text).unwrap_err();
    assert_eq!(err.problems().len(), 50);
    assert!(err.to_string().ends_with("... and 30 more"), "{err}");
}

#[test]
fn missing_file_names_the_file() {
    let err = Inventory::load(Path::new("/nonexistent/nodes.csv"), &[]).unwrap_err();
    assert!(err.to_string().starts_with("/nonexistent/nodes.csv: "));
}
