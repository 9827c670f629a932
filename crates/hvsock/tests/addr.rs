//! The address types of `hvsock::addr`: every accepted text form, every
//! error, round trips (by example and by proptest) and the ephemeral port
//! allocator.

use hvsock::addr::{
    parse_u32, EphemeralPorts, EphemeralPortsExhausted, HostTarget, HvAddr, ParseAddrError,
    ServiceId, Target, VmRef, VsockAddr, WellKnownVm, EPHEMERAL_END, EPHEMERAL_FIRST,
    EPHEMERAL_MAX_TRIES, VMADDR_CID_ANY, VMADDR_CID_HOST, VMADDR_CID_HYPERVISOR, VMADDR_CID_LOCAL,
    VMADDR_PORT_ANY,
};
use hvsock::Guid;
use proptest::prelude::*;

const ALPHA_ID: &str = "3f2504e0-4f89-11d3-9a0c-0305e82c3301";

fn guid(text: &str) -> Guid {
    text.parse().unwrap()
}

// --- constants --------------------------------------------------------------

#[test]
fn vsock_constants() {
    assert_eq!(VMADDR_CID_ANY, 0xFFFF_FFFF);
    assert_eq!(VMADDR_CID_HYPERVISOR, 0);
    assert_eq!(VMADDR_CID_LOCAL, 1);
    assert_eq!(VMADDR_CID_HOST, 2);
    assert_eq!(VMADDR_PORT_ANY, 0xFFFF_FFFF);
}

// --- VsockAddr --------------------------------------------------------------

#[test]
fn vsock_addr_accepted_forms() {
    let cases: &[(&str, u32, u32)] = &[
        ("5000", VMADDR_CID_HOST, 5000),
        ("0x1388", VMADDR_CID_HOST, 5000),
        ("0X1388", VMADDR_CID_HOST, 5000),
        ("0", VMADDR_CID_HOST, 0),
        ("4294967295", VMADDR_CID_HOST, u32::MAX),
        ("2:5000", 2, 5000),
        ("0x2:0x1388", 2, 5000),
        ("host:5000", VMADDR_CID_HOST, 5000),
        ("HOST:5000", VMADDR_CID_HOST, 5000),
        ("any:1024", VMADDR_CID_ANY, 1024),
        ("Any:1024", VMADDR_CID_ANY, 1024),
        ("4294967295:7", VMADDR_CID_ANY, 7),
        ("3:0xffffffff", 3, VMADDR_PORT_ANY),
        ("007:08", 7, 8),
    ];
    for &(text, cid, port) in cases {
        assert_eq!(
            text.parse::<VsockAddr>(),
            Ok(VsockAddr::new(cid, port)),
            "{text}"
        );
    }
}

#[test]
fn vsock_addr_errors() {
    let port = |t: &str| ParseAddrError::Port { text: t.into() };
    let cid = |t: &str| ParseAddrError::Cid { text: t.into() };
    let whole = |t: &str| ParseAddrError::Vsock { text: t.into() };
    let cases: &[(&str, ParseAddrError)] = &[
        ("", whole("")),
        ("1:2:3", whole("1:2:3")),
        ("host", port("host")),
        ("4294967296", port("4294967296")),
        ("-1", port("-1")),
        ("+1", port("+1")),
        ("0x", port("0x")),
        (" 5", port(" 5")),
        ("2:", port("")),
        (":5", cid("")),
        ("guest:5", cid("guest")),
        ("0x1_0:5", cid("0x1_0")),
        ("4294967296:5", cid("4294967296")),
    ];
    for (text, err) in cases {
        assert_eq!(text.parse::<VsockAddr>().as_ref(), Err(err), "{text}");
    }
}

#[test]
fn vsock_addr_display_and_service_id() {
    let a = VsockAddr::new(VMADDR_CID_HOST, 0x1234);
    assert_eq!(a.to_string(), "2:4660");
    // PROTOCOL.md 7.5.
    assert_eq!(
        a.service_id().as_bytes(),
        &[
            0x34, 0x12, 0x00, 0x00, 0xcb, 0xfa, 0xe6, 0x11, 0xbd, 0x58, 0x64, 0x00, 0x6a, 0x79,
            0x86, 0xd3
        ]
    );
    assert_eq!(
        VsockAddr::new(VMADDR_CID_ANY, 0x7FFF_FFFF)
            .service_id()
            .to_string(),
        "7fffffff-facb-11e6-bd58-64006a7986d3"
    );
    assert_eq!(
        VsockAddr::new(VMADDR_CID_ANY, 1).to_string(),
        "4294967295:1"
    );
}

// --- ServiceId --------------------------------------------------------------

#[test]
fn service_accepted_forms() {
    let port = ServiceId::from_port(5000);
    for text in [
        "5000",
        "0x1388",
        "0X1388",
        "00005000",
        "00001388-facb-11e6-bd58-64006a7986d3",
        "00001388-FACB-11E6-BD58-64006A7986D3",
        "{00001388-facb-11e6-bd58-64006a7986d3}",
    ] {
        assert_eq!(text.parse::<ServiceId>(), Ok(port), "{text}");
    }
    assert_eq!(ALPHA_ID.parse::<ServiceId>(), Ok(ServiceId(guid(ALPHA_ID))));
    assert_eq!(
        "0xffffffff".parse::<ServiceId>().unwrap().port(),
        Some(u32::MAX)
    );
    assert_eq!(
        "0".parse::<ServiceId>().unwrap().guid(),
        Guid::VSOCK_TEMPLATE
    );
}

#[test]
fn service_display() {
    assert_eq!(ServiceId::from_port(5000).to_string(), "5000");
    assert_eq!(ServiceId(guid(ALPHA_ID)).to_string(), ALPHA_ID);
    assert_eq!(ServiceId(guid(ALPHA_ID)).port(), None);
    assert_eq!(
        ServiceId(Guid::PARENT).to_string(),
        Guid::PARENT.to_string()
    );
    assert_eq!(
        Guid::from(ServiceId::from_port(1)),
        Guid::from_vsock_port(1)
    );
    assert_eq!(ServiceId::from(Guid::PARENT), ServiceId(Guid::PARENT));
}

#[test]
fn service_errors() {
    for text in [
        "",
        "alpha",
        "4294967296",
        "0x100000000",
        "-5",
        "5000 ",
        "00001388-facb-11e6-bd58-64006a7986d",
        "00001388-facb-11e6-bd58-64006a7986dg",
        "{00001388-facb-11e6-bd58-64006a7986d3",
        "5000:",
    ] {
        assert_eq!(
            text.parse::<ServiceId>(),
            Err(ParseAddrError::Service { text: text.into() }),
            "{text}"
        );
    }
}

// --- VmRef and WellKnownVm --------------------------------------------------

#[test]
fn well_known_vms() {
    let cases = [
        ("zero", Guid::ZERO),
        ("wildcard", Guid::WILDCARD),
        ("broadcast", Guid::BROADCAST),
        ("children", Guid::CHILDREN),
        ("loopback", Guid::LOOPBACK),
        ("parent", Guid::PARENT),
        ("silohost", Guid::SILOHOST),
    ];
    for (name, id) in cases {
        for text in [name.to_string(), name.to_uppercase(), capitalise(name)] {
            assert_eq!(text.parse::<VmRef>(), Ok(VmRef::Id(id)), "{text}");
        }
        let vm = WellKnownVm::from_name(name).unwrap();
        assert_eq!(vm.guid(), id);
        assert_eq!(WellKnownVm::from_guid(id), Some(vm));
    }
    for vm in WellKnownVm::ALL {
        assert_eq!(vm.to_string(), vm.name());
        assert_eq!(VmRef::from(vm).to_string(), vm.name());
        assert!(!VmRef::is_valid_name(vm.name()));
    }
    // ZERO and WILDCARD are one GUID, written as "zero".
    assert_eq!(VmRef::Id(Guid::WILDCARD).to_string(), "zero");
    assert_eq!(WellKnownVm::from_guid(guid(ALPHA_ID)), None);
    assert_eq!(WellKnownVm::from_name("parents"), None);
}

fn capitalise(s: &str) -> String {
    let mut c = s.chars();
    c.next()
        .map(|first| first.to_ascii_uppercase().to_string() + c.as_str())
        .unwrap_or_default()
}

#[test]
fn vm_accepted_forms() {
    let name = |n: &str| VmRef::Name(n.into());
    let max = "a".repeat(64);
    let cases: Vec<(&str, VmRef)> = vec![
        ("alpha", name("alpha")),
        ("Alpha-2_b.c", name("Alpha-2_b.c")),
        ("5000", name("5000")),
        ("0x1388", name("0x1388")),
        ("-", name("-")),
        (".", name(".")),
        (&max, name(&max)),
        // 36 characters of hex and '-' that are not a GUID stay a name.
        (
            "3f2504e0-4f89-11d3-9a0c-0305e82c330-",
            name("3f2504e0-4f89-11d3-9a0c-0305e82c330-"),
        ),
        (ALPHA_ID, VmRef::Id(guid(ALPHA_ID))),
        (
            "3F2504E0-4F89-11D3-9A0C-0305E82C3301",
            VmRef::Id(guid(ALPHA_ID)),
        ),
        (
            "{3f2504e0-4f89-11d3-9a0c-0305e82c3301}",
            VmRef::Id(guid(ALPHA_ID)),
        ),
    ];
    for (text, vm) in cases {
        assert_eq!(text.parse::<VmRef>(), Ok(vm), "{text}");
    }
    assert_eq!(VmRef::name("alpha"), Ok(name("alpha")));
    assert_eq!(name("alpha").id(), None);
    assert_eq!(VmRef::from(Guid::PARENT).id(), Some(Guid::PARENT));
}

#[test]
fn vm_errors() {
    let too_long = "a".repeat(65);
    for text in [
        "",
        too_long.as_str(),
        "al pha",
        "alpha:",
        "al/pha",
        "älpha",
        "{alpha}",
        "alpha\n",
    ] {
        assert_eq!(
            text.parse::<VmRef>(),
            Err(ParseAddrError::Vm { text: text.into() }),
            "{text:?}"
        );
    }
    // Reserved as names: GUIDs and well-known names.
    for text in [ALPHA_ID, "parent", "WILDCARD"] {
        assert!(!VmRef::is_valid_name(text), "{text}");
        assert_eq!(
            VmRef::name(text),
            Err(ParseAddrError::Vm { text: text.into() })
        );
    }
}

#[test]
fn vm_display() {
    assert_eq!(VmRef::Name("alpha".into()).to_string(), "alpha");
    assert_eq!(VmRef::Id(guid(ALPHA_ID)).to_string(), ALPHA_ID);
    assert_eq!(VmRef::Id(Guid::SILOHOST).to_string(), "silohost");
}

// --- HostTarget, Target, HvAddr ---------------------------------------------

#[test]
fn host_target_accepted_forms() {
    let t = |vm: VmRef, service: ServiceId| HostTarget { vm, service };
    let alpha = VmRef::Name("alpha".into());
    let id = VmRef::Id(guid(ALPHA_ID));
    let cases: Vec<(String, HostTarget)> = vec![
        (
            "alpha:5000".into(),
            t(alpha.clone(), ServiceId::from_port(5000)),
        ),
        (
            "alpha:0x1388".into(),
            t(alpha.clone(), ServiceId::from_port(5000)),
        ),
        (
            format!("alpha:{ALPHA_ID}"),
            t(alpha.clone(), ServiceId(guid(ALPHA_ID))),
        ),
        (
            format!("{ALPHA_ID}:5000"),
            t(id.clone(), ServiceId::from_port(5000)),
        ),
        (
            format!("{{{ALPHA_ID}}}:{{{ALPHA_ID}}}"),
            t(id.clone(), ServiceId(guid(ALPHA_ID))),
        ),
        (
            format!("{ALPHA_ID}:00001388-facb-11e6-bd58-64006a7986d3"),
            t(id, ServiceId::from_port(5000)),
        ),
        (
            "parent:1".into(),
            t(VmRef::Id(Guid::PARENT), ServiceId::from_port(1)),
        ),
        (
            "Wildcard:4294967295".into(),
            t(VmRef::Id(Guid::ZERO), ServiceId::from_port(u32::MAX)),
        ),
        // A VM may be named with digits only: the position decides.
        (
            "5000:6000".into(),
            t(VmRef::Name("5000".into()), ServiceId::from_port(6000)),
        ),
    ];
    for (text, target) in cases {
        assert_eq!(text.parse::<HostTarget>(), Ok(target.clone()), "{text}");
        assert_eq!(text.parse::<Target>(), Ok(Target::from(target)), "{text}");
    }
}

#[test]
fn host_target_errors() {
    let cases: Vec<(&str, ParseAddrError)> = vec![
        ("", ParseAddrError::Empty),
        (
            "5000",
            ParseAddrError::MissingVm {
                text: "5000".into(),
            },
        ),
        (
            ALPHA_ID,
            ParseAddrError::MissingVm {
                text: ALPHA_ID.into(),
            },
        ),
        (":5000", ParseAddrError::Vm { text: "".into() }),
        ("alpha:", ParseAddrError::Service { text: "".into() }),
        (
            "alpha:beta",
            ParseAddrError::Service {
                text: "beta".into(),
            },
        ),
        ("a:b:5000", ParseAddrError::Vm { text: "a:b".into() }),
        (
            "al pha:5000",
            ParseAddrError::Vm {
                text: "al pha".into(),
            },
        ),
        (
            "alpha:0x100000000",
            ParseAddrError::Service {
                text: "0x100000000".into(),
            },
        ),
    ];
    for (text, err) in cases {
        assert_eq!(text.parse::<HostTarget>(), Err(err), "{text}");
    }
}

#[test]
fn target_forms() {
    assert_eq!(
        "5000".parse::<Target>(),
        Ok(Target {
            vm: None,
            service: ServiceId::from_port(5000)
        })
    );
    assert_eq!(
        ALPHA_ID.parse::<Target>(),
        Ok(Target {
            vm: None,
            service: ServiceId(guid(ALPHA_ID))
        })
    );
    assert_eq!("".parse::<Target>(), Err(ParseAddrError::Empty));
    assert_eq!(
        "alpha".parse::<Target>(),
        Err(ParseAddrError::Service {
            text: "alpha".into()
        })
    );
    let bare: Target = "0x1388".parse().unwrap();
    assert_eq!(bare.to_string(), "5000");
    let named = bare.with_vm(|| VmRef::Name("beta".into()));
    assert_eq!(named.to_string(), "beta:5000");
    // An explicit VM wins over the implied one.
    let explicit: Target = "alpha:5000".parse().unwrap();
    assert_eq!(
        explicit.with_vm(|| unreachable!()).vm,
        VmRef::Name("alpha".into())
    );
}

#[test]
fn hv_addr() {
    let a = HvAddr::from_vsock_port(guid(ALPHA_ID), 5000);
    assert_eq!(a.service_id, Guid::from_vsock_port(5000));
    assert_eq!(a.vsock_port(), Some(5000));
    assert_eq!(a.to_string(), format!("{ALPHA_ID}:5000"));
    assert_eq!(a.to_string().parse(), Ok(a));
    let b = HvAddr::new(WellKnownVm::Children.guid(), Guid::SILOHOST);
    assert_eq!(b.vsock_port(), None);
    assert_eq!(b.to_string(), format!("children:{}", Guid::SILOHOST));
    assert_eq!(b.to_string().parse(), Ok(b));
    assert_eq!(
        "alpha:5000".parse::<HvAddr>(),
        Err(ParseAddrError::VmName {
            name: "alpha".into()
        })
    );
    assert_eq!(
        "5000".parse::<HvAddr>(),
        Err(ParseAddrError::MissingVm {
            text: "5000".into()
        })
    );
    assert_eq!(HostTarget::from(a).try_into(), Ok(a));
}

#[test]
fn error_messages_show_the_forms() {
    let msg = "".parse::<Target>().unwrap_err().to_string();
    assert!(
        msg.contains(
            "expected SERVICE (a vsock port like 5000 or 0x1388, or a service GUID) or \
             VM:SERVICE (VM by name like alpha or by GUID)"
        ),
        "{msg}"
    );
    let msg = "alpha:x".parse::<HostTarget>().unwrap_err().to_string();
    assert!(msg.contains("\"x\"") && msg.contains("0x1388") && msg.contains("GUID"));
    let msg = "x:y:1".parse::<HostTarget>().unwrap_err().to_string();
    assert!(msg.contains("alpha") && msg.contains("parent"), "{msg}");
    let msg = "5000".parse::<HostTarget>().unwrap_err().to_string();
    assert!(msg.contains("VM:SERVICE") && msg.contains("alpha:5000"));
    let msg = "guest:1".parse::<VsockAddr>().unwrap_err().to_string();
    assert!(msg.contains("host (2)"), "{msg}");
    let msg = "1:2:3".parse::<VsockAddr>().unwrap_err().to_string();
    assert!(msg.contains("CID:PORT"), "{msg}");
}

#[test]
fn parse_u32_is_public_and_strict() {
    assert_eq!(parse_u32("0x10"), Some(16));
    assert_eq!(parse_u32("10"), Some(10));
    assert_eq!(parse_u32("1e3"), None);
}

// --- Ephemeral ports --------------------------------------------------------

#[test]
fn ephemeral_sequential_from_start() {
    let mut ports = EphemeralPorts::with_start(5000);
    assert_eq!(ports.peek(), 5000);
    let got: Vec<u32> = (0..4).map(|_| ports.allocate(|_| false).unwrap()).collect();
    assert_eq!(got, [5000, 5001, 5002, 5003]);
}

#[test]
fn ephemeral_skips_ports_in_use() {
    let bound = [5000, 5001, 5003];
    let mut ports = EphemeralPorts::with_start(5000);
    let mut tried = Vec::new();
    let port = ports
        .allocate(|p| {
            tried.push(p);
            bound.contains(&p)
        })
        .unwrap();
    assert_eq!(port, 5002);
    assert_eq!(tried, [5000, 5001, 5002]);
    assert_eq!(ports.allocate(|p| bound.contains(&p)), Ok(5004));
}

#[test]
fn ephemeral_wraps_below_2_pow_31() {
    let mut ports = EphemeralPorts::with_start(EPHEMERAL_END - 2);
    assert_eq!(ports.allocate(|_| false), Ok(0x7FFF_FFFE));
    assert_eq!(ports.allocate(|_| false), Ok(0x7FFF_FFFF));
    assert_eq!(ports.allocate(|_| false), Ok(EPHEMERAL_FIRST));
    let mut ports = EphemeralPorts::with_start(EPHEMERAL_END - 1);
    assert_eq!(ports.allocate(|p| p == 0x7FFF_FFFF), Ok(1024));
}

#[test]
fn ephemeral_start_out_of_range_is_folded() {
    for start in [0, 1023, EPHEMERAL_END, u32::MAX] {
        let p = EphemeralPorts::with_start(start).peek();
        assert!((EPHEMERAL_FIRST..EPHEMERAL_END).contains(&p), "{start}");
    }
    for _ in 0..32 {
        let p = EphemeralPorts::new_random().peek();
        assert!((EPHEMERAL_FIRST..EPHEMERAL_END).contains(&p));
    }
}

#[test]
fn ephemeral_gives_up_after_bounded_tries() {
    let mut ports = EphemeralPorts::with_start(2000);
    let mut calls = 0;
    assert_eq!(
        ports.allocate(|_| {
            calls += 1;
            true
        }),
        Err(EphemeralPortsExhausted {
            tries: EPHEMERAL_MAX_TRIES
        })
    );
    assert_eq!(calls, EPHEMERAL_MAX_TRIES);
    // The next attempt continues where the last one stopped.
    assert_eq!(ports.peek(), 2000 + EPHEMERAL_MAX_TRIES);
    let mut ports = EphemeralPorts::with_start(2000).max_tries(3);
    assert_eq!(
        ports.allocate(|p| p < 2003),
        Err(EphemeralPortsExhausted { tries: 3 })
    );
    assert_eq!(ports.allocate(|p| p < 2003), Ok(2003));
    let mut ports = EphemeralPorts::with_start(2000).max_tries(0);
    assert_eq!(ports.allocate(|_| false), Ok(2000));
    assert!(EphemeralPortsExhausted { tries: 3 }
        .to_string()
        .contains("3 tries"));
}

#[test]
fn ephemeral_unique_against_live_set() {
    let mut live = std::collections::BTreeSet::new();
    // Listeners bound ahead of the allocator.
    live.extend([1030, 1031, 1040]);
    let mut ports = EphemeralPorts::with_start(EPHEMERAL_END - 10);
    for _ in 0..100 {
        let p = ports.allocate(|p| live.contains(&p)).unwrap();
        assert!((EPHEMERAL_FIRST..EPHEMERAL_END).contains(&p));
        assert!(live.insert(p), "{p} handed out twice");
    }
}

// --- proptest ---------------------------------------------------------------

fn any_guid() -> impl Strategy<Value = Guid> {
    prop_oneof![
        any::<[u8; 16]>().prop_map(Guid::from_bytes),
        any::<u32>().prop_map(Guid::from_vsock_port),
        prop::sample::select(WellKnownVm::ALL.to_vec()).prop_map(WellKnownVm::guid),
    ]
}

fn any_vm() -> impl Strategy<Value = VmRef> {
    prop_oneof![
        any_guid().prop_map(VmRef::Id),
        "[A-Za-z0-9._-]{1,64}"
            .prop_filter("reserved", |n| VmRef::is_valid_name(n))
            .prop_map(VmRef::Name),
    ]
}

fn any_service() -> impl Strategy<Value = ServiceId> {
    any_guid().prop_map(ServiceId)
}

proptest! {
    #[test]
    fn vsock_addr_round_trip(cid: u32, port: u32) {
        let a = VsockAddr::new(cid, port);
        prop_assert_eq!(a.to_string().parse(), Ok(a));
        prop_assert_eq!(format!("{cid:#x}:{port:#X}").parse(), Ok(a));
    }

    #[test]
    fn service_round_trip(s in any_service()) {
        prop_assert_eq!(s.to_string().parse(), Ok(s));
        prop_assert_eq!(s.guid().to_string().parse(), Ok(s));
    }

    #[test]
    fn vm_round_trip(vm in any_vm()) {
        prop_assert_eq!(vm.to_string().parse(), Ok(vm));
    }

    #[test]
    fn host_target_round_trip(vm in any_vm(), service in any_service()) {
        let t = HostTarget { vm, service };
        prop_assert_eq!(t.to_string().parse(), Ok(t.clone()));
        let t = Target::from(t);
        prop_assert_eq!(t.to_string().parse(), Ok(t));
    }

    #[test]
    fn bare_target_round_trip(service in any_service()) {
        let t = Target { vm: None, service };
        prop_assert_eq!(t.to_string().parse(), Ok(t));
    }

    #[test]
    fn hv_addr_round_trip(vm in any_guid(), service in any_guid()) {
        let a = HvAddr::new(vm, service);
        prop_assert_eq!(a.to_string().parse(), Ok(a));
    }

    #[test]
    fn parsing_arbitrary_strings_never_panics(s in ".{0,80}") {
        hvsock::fuzzing::addr_parse(s.as_bytes());
    }

    #[test]
    fn parsing_address_like_strings_never_panics(
        s in "[0-9a-fA-Fx:{}-]{0,90}|[a-z]{0,10}:[0-9x]{0,12}"
    ) {
        hvsock::fuzzing::addr_parse(s.as_bytes());
    }

    #[test]
    fn parsing_arbitrary_bytes_never_panics(b in prop::collection::vec(any::<u8>(), 0..100)) {
        hvsock::fuzzing::addr_parse(&b);
    }

    #[test]
    fn ephemeral_never_hands_out_a_port_in_use(
        start: u32,
        used in prop::collection::btree_set(EPHEMERAL_FIRST..EPHEMERAL_FIRST + 64, 0..40),
    ) {
        let mut ports = EphemeralPorts::with_start(EPHEMERAL_FIRST + start % 64);
        if let Ok(p) = ports.allocate(|p| used.contains(&p)) {
            prop_assert!(!used.contains(&p));
            prop_assert!((EPHEMERAL_FIRST..EPHEMERAL_END).contains(&p));
        }
    }
}
