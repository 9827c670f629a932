//! Addresses: the guest's [`VsockAddr`] (AF_VSOCK), the host's [`HvAddr`]
//! (AF_HYPERV), the command-line forms `SERVICE` and `VM:SERVICE`
//! ([`ServiceId`], [`VmRef`], [`HostTarget`], [`Target`]) and the guest's
//! ephemeral port allocator [`EphemeralPorts`] (PROTOCOL.md section 4).
//!
//! Every type here has a text form: `Display` writes it and `FromStr` reads
//! it back to an equal value. Numbers are accepted in decimal (`5000`) or
//! `0x` hex (`0x1388`) and always written in decimal.

use std::collections::hash_map::RandomState;
use std::fmt;
use std::hash::{BuildHasher, Hasher};
use std::str::FromStr;

use vmbus::Guid;

/// `VMADDR_CID_ANY`: any CID. hv_sock reports it as every local CID.
pub const VMADDR_CID_ANY: u32 = 0xFFFF_FFFF;
/// `VMADDR_CID_HYPERVISOR`: reserved for the hypervisor.
pub const VMADDR_CID_HYPERVISOR: u32 = 0;
/// `VMADDR_CID_LOCAL`: the local (loopback) transport.
pub const VMADDR_CID_LOCAL: u32 = 1;
/// `VMADDR_CID_HOST`: the host, the only remote CID hv_sock accepts.
pub const VMADDR_CID_HOST: u32 = 2;
/// `VMADDR_PORT_ANY`: bind to any free port.
pub const VMADDR_PORT_ANY: u32 = 0xFFFF_FFFF;

/// The accepted forms of an address, shown by every parse error that is
/// about the whole address rather than one of its parts.
const TARGET_FORMS: &str = "expected SERVICE (a vsock port like 5000 or 0x1388, or a service \
     GUID) or VM:SERVICE (VM by name like alpha or by GUID)";

/// Why a text is not an address. Each message names the accepted forms,
/// with examples.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ParseAddrError {
    /// Not a 32-bit port number.
    #[error(
        "invalid port {text:?}: expected a number from 0 to 4294967295, \
         decimal like 5000 or hex like 0x1388"
    )]
    Port {
        /// The rejected text.
        text: String,
    },
    /// Not a CID.
    #[error(
        "invalid CID {text:?}: expected a number (decimal like 2 or hex like 0x2), \
         host (2) or any (4294967295)"
    )]
    Cid {
        /// The rejected text.
        text: String,
    },
    /// Neither a vsock port nor a GUID.
    #[error(
        "invalid SERVICE {text:?}: expected a vsock port like 5000 or 0x1388, \
         or a service GUID like 00001388-facb-11e6-bd58-64006a7986d3"
    )]
    Service {
        /// The rejected text.
        text: String,
    },
    /// Neither a VM name, a VM GUID nor a well-known VM.
    #[error(
        "invalid VM {text:?}: expected a VM name like alpha (1 to 64 letters, digits, \
         '-', '_' or '.'), a VM GUID like 3f2504e0-4f89-11d3-9a0c-0305e82c3301, or one of \
         zero, wildcard, broadcast, children, loopback, parent, silohost"
    )]
    Vm {
        /// The rejected text.
        text: String,
    },
    /// A VM named where only a GUID will do ([`HvAddr`] has no name
    /// resolution).
    #[error(
        "VM {name:?} is a name, but this address needs a VM GUID \
         (like 3f2504e0-4f89-11d3-9a0c-0305e82c3301) or a well-known VM (like parent)"
    )]
    VmName {
        /// The VM name.
        name: String,
    },
    /// `VM:SERVICE` was required but the text has no `:`.
    #[error(
        "invalid address {text:?}: expected VM:SERVICE (VM by name like alpha or by GUID, \
         SERVICE a vsock port like 5000 or 0x1388 or a service GUID), e.g. alpha:5000"
    )]
    MissingVm {
        /// The rejected text.
        text: String,
    },
    /// A guest address that is neither `PORT` nor `CID:PORT`.
    #[error(
        "invalid vsock address {text:?}: expected PORT or CID:PORT, e.g. 5000, 2:5000, \
         host:0x1388 or any:5000"
    )]
    Vsock {
        /// The rejected text.
        text: String,
    },
    /// Empty text where an address was expected.
    #[error("empty address: {TARGET_FORMS}")]
    Empty,
}

/// Parses a `u32` written in decimal or with a `0x`/`0X` prefix in hex.
///
/// No sign, no underscores, no empty digits; leading zeros are fine.
pub fn parse_u32(text: &str) -> Option<u32> {
    let (digits, radix) = match text.strip_prefix("0x").or_else(|| text.strip_prefix("0X")) {
        Some(hex) => (hex, 16),
        None => (text, 10),
    };
    // `from_str_radix` would also take a leading '+'.
    if digits.is_empty() || !digits.chars().all(|c| c.is_digit(radix)) {
        return None;
    }
    u32::from_str_radix(digits, radix).ok()
}

fn parse_port(text: &str) -> Result<u32, ParseAddrError> {
    parse_u32(text).ok_or_else(|| ParseAddrError::Port { text: text.into() })
}

// ---------------------------------------------------------------------------
// Guest side

/// A guest-side (AF_VSOCK) address: a context id and a port.
///
/// The remote CID of an hv_sock connection is always [`VMADDR_CID_HOST`]; the
/// local one is reported as [`VMADDR_CID_ANY`]. CIDs never travel on the wire:
/// only the port does, as the [service id](VsockAddr::service_id).
///
/// Text form: `CID:PORT` (written in decimal); `PORT` alone, `host` and `any`
/// for the CID and `0x` hex are accepted too.
///
/// ```
/// use hvsock::addr::{VsockAddr, VMADDR_CID_HOST};
/// let a: VsockAddr = "host:0x1388".parse().unwrap();
/// assert_eq!(a, VsockAddr::new(VMADDR_CID_HOST, 5000));
/// assert_eq!(a.to_string(), "2:5000");
/// assert_eq!(a.service_id().to_string(), "00001388-facb-11e6-bd58-64006a7986d3");
/// ```
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct VsockAddr {
    /// The context id ([`VMADDR_CID_HOST`], [`VMADDR_CID_ANY`], ...).
    pub cid: u32,
    /// The port.
    pub port: u32,
}

impl VsockAddr {
    /// An address from its parts.
    pub const fn new(cid: u32, port: u32) -> VsockAddr {
        VsockAddr { cid, port }
    }

    /// The service GUID that carries this port on the wire:
    /// `{port:08x}-facb-11e6-bd58-64006a7986d3`.
    pub const fn service_id(&self) -> Guid {
        Guid::from_vsock_port(self.port)
    }
}

impl fmt::Display for VsockAddr {
    /// `CID:PORT`, both in decimal.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}:{}", self.cid, self.port)
    }
}

impl FromStr for VsockAddr {
    type Err = ParseAddrError;

    /// Parses `PORT` or `CID:PORT`. A bare `PORT` means the host
    /// ([`VMADDR_CID_HOST`]), the only peer a guest has. The CID may be
    /// `host` (2) or `any` (4294967295), in any case.
    fn from_str(s: &str) -> Result<VsockAddr, ParseAddrError> {
        if s.is_empty() {
            return Err(ParseAddrError::Vsock { text: s.into() });
        }
        let Some((cid, port)) = s.split_once(':') else {
            return Ok(VsockAddr::new(VMADDR_CID_HOST, parse_port(s)?));
        };
        if port.contains(':') {
            return Err(ParseAddrError::Vsock { text: s.into() });
        }
        let cid = if cid.eq_ignore_ascii_case("host") {
            VMADDR_CID_HOST
        } else if cid.eq_ignore_ascii_case("any") {
            VMADDR_CID_ANY
        } else {
            parse_u32(cid).ok_or_else(|| ParseAddrError::Cid { text: cid.into() })?
        };
        Ok(VsockAddr::new(cid, parse_port(port)?))
    }
}

// ---------------------------------------------------------------------------
// Services

/// A service: any GUID, shown as its vsock port when it is vsock-shaped.
///
/// This is the `SERVICE` of the command line: a vsock port (decimal or `0x`
/// hex, mapped onto the template of PROTOCOL.md 4.1) or a GUID.
///
/// ```
/// use hvsock::addr::ServiceId;
/// let s: ServiceId = "00001388-facb-11e6-bd58-64006a7986d3".parse().unwrap();
/// assert_eq!(s.port(), Some(5000));
/// assert_eq!(s.to_string(), "5000");
/// assert_eq!("0x1388".parse::<ServiceId>(), Ok(s));
/// ```
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct ServiceId(pub Guid);

impl ServiceId {
    /// The service of vsock port `port`.
    pub const fn from_port(port: u32) -> ServiceId {
        ServiceId(Guid::from_vsock_port(port))
    }

    /// The service GUID.
    pub const fn guid(&self) -> Guid {
        self.0
    }

    /// The vsock port, if the GUID is vsock-shaped.
    pub fn port(&self) -> Option<u32> {
        self.0.vsock_port()
    }
}

impl From<Guid> for ServiceId {
    fn from(guid: Guid) -> ServiceId {
        ServiceId(guid)
    }
}

impl From<ServiceId> for Guid {
    fn from(service: ServiceId) -> Guid {
        service.0
    }
}

impl fmt::Display for ServiceId {
    /// The port in decimal when vsock-shaped, else the GUID.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.port() {
            Some(port) => write!(f, "{port}"),
            None => write!(f, "{}", self.0),
        }
    }
}

impl FromStr for ServiceId {
    type Err = ParseAddrError;

    /// Parses a GUID (`xxxxxxxx-xxxx-xxxx-xxxx-xxxxxxxxxxxx`, optionally in
    /// braces) or a vsock port (decimal or `0x` hex).
    fn from_str(s: &str) -> Result<ServiceId, ParseAddrError> {
        if let Some(port) = parse_u32(s) {
            return Ok(ServiceId::from_port(port));
        }
        s.parse::<Guid>()
            .map(ServiceId)
            .map_err(|_| ParseAddrError::Service { text: s.into() })
    }
}

// ---------------------------------------------------------------------------
// VMs

/// The well-known VM ids of AF_HYPERV (PROTOCOL.md 4.4), with their names on
/// the command line.
///
/// `wildcard` is accepted as another name of [`WellKnownVm::Zero`]: the two
/// GUIDs are equal.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum WellKnownVm {
    /// `HV_GUID_ZERO` (= `HV_GUID_WILDCARD`): a listener accepts from all
    /// partitions.
    Zero,
    /// `HV_GUID_BROADCAST`: all bits set.
    Broadcast,
    /// `HV_GUID_CHILDREN`: a listener accepts from this partition's children.
    Children,
    /// `HV_GUID_LOOPBACK`: connect to the same partition.
    Loopback,
    /// `HV_GUID_PARENT`: connect to the parent partition.
    Parent,
    /// `HV_GUID_SILOHOST`: the silo (Windows container) host.
    SiloHost,
}

impl WellKnownVm {
    /// Every well-known VM, once each.
    pub const ALL: [WellKnownVm; 6] = [
        WellKnownVm::Zero,
        WellKnownVm::Broadcast,
        WellKnownVm::Children,
        WellKnownVm::Loopback,
        WellKnownVm::Parent,
        WellKnownVm::SiloHost,
    ];

    /// Its VM id.
    pub const fn guid(self) -> Guid {
        match self {
            WellKnownVm::Zero => Guid::ZERO,
            WellKnownVm::Broadcast => Guid::BROADCAST,
            WellKnownVm::Children => Guid::CHILDREN,
            WellKnownVm::Loopback => Guid::LOOPBACK,
            WellKnownVm::Parent => Guid::PARENT,
            WellKnownVm::SiloHost => Guid::SILOHOST,
        }
    }

    /// Its name on the command line (lower case).
    pub const fn name(self) -> &'static str {
        match self {
            WellKnownVm::Zero => "zero",
            WellKnownVm::Broadcast => "broadcast",
            WellKnownVm::Children => "children",
            WellKnownVm::Loopback => "loopback",
            WellKnownVm::Parent => "parent",
            WellKnownVm::SiloHost => "silohost",
        }
    }

    /// The well-known VM with this id, if any.
    pub fn from_guid(guid: Guid) -> Option<WellKnownVm> {
        WellKnownVm::ALL.into_iter().find(|vm| vm.guid() == guid)
    }

    /// The well-known VM with this name (any case; `wildcard` is
    /// [`WellKnownVm::Zero`]).
    pub fn from_name(name: &str) -> Option<WellKnownVm> {
        if name.eq_ignore_ascii_case("wildcard") {
            return Some(WellKnownVm::Zero);
        }
        WellKnownVm::ALL
            .into_iter()
            .find(|vm| vm.name().eq_ignore_ascii_case(name))
    }
}

impl fmt::Display for WellKnownVm {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

/// Longest VM name, in bytes.
pub const MAX_VM_NAME: usize = 64;

/// A VM as the command line names it: by GUID or by a name the host
/// resolves.
///
/// Text form: a well-known name (`parent`, `zero`, ..., any case; parsed to
/// [`VmRef::Id`]), a GUID, or a name of 1 to [`MAX_VM_NAME`] letters, digits,
/// `-`, `_` and `.`. Names that read as a GUID or a well-known name are
/// taken as those, so they are not valid [`VmRef::Name`]s
/// (see [`VmRef::is_valid_name`]).
///
/// ```
/// use hvsock::addr::VmRef;
/// use hvsock::Guid;
/// assert_eq!("Parent".parse::<VmRef>(), Ok(VmRef::Id(Guid::PARENT)));
/// assert_eq!(VmRef::Id(Guid::PARENT).to_string(), "parent");
/// assert_eq!("alpha".parse::<VmRef>(), Ok(VmRef::Name("alpha".into())));
/// ```
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum VmRef {
    /// A VM id.
    Id(Guid),
    /// A VM name, resolved by the host.
    Name(String),
}

impl VmRef {
    /// A [`VmRef::Name`], if `name` is a valid name.
    pub fn name(name: &str) -> Result<VmRef, ParseAddrError> {
        if VmRef::is_valid_name(name) {
            Ok(VmRef::Name(name.into()))
        } else {
            Err(ParseAddrError::Vm { text: name.into() })
        }
    }

    /// Whether `name` is a valid [`VmRef::Name`]: 1 to [`MAX_VM_NAME`] bytes
    /// of ASCII letters, digits, `-`, `_` and `.`, and neither a GUID nor a
    /// well-known name.
    pub fn is_valid_name(name: &str) -> bool {
        (1..=MAX_VM_NAME).contains(&name.len())
            && name
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.'))
            && name.parse::<Guid>().is_err()
            && WellKnownVm::from_name(name).is_none()
    }

    /// The GUID, for [`VmRef::Id`].
    pub fn id(&self) -> Option<Guid> {
        match self {
            VmRef::Id(guid) => Some(*guid),
            VmRef::Name(_) => None,
        }
    }
}

impl From<Guid> for VmRef {
    fn from(guid: Guid) -> VmRef {
        VmRef::Id(guid)
    }
}

impl From<WellKnownVm> for VmRef {
    fn from(vm: WellKnownVm) -> VmRef {
        VmRef::Id(vm.guid())
    }
}

impl fmt::Display for VmRef {
    /// A well-known VM by its name, another id as a GUID, a name as is.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            VmRef::Id(guid) => match WellKnownVm::from_guid(*guid) {
                Some(vm) => f.write_str(vm.name()),
                None => write!(f, "{guid}"),
            },
            VmRef::Name(name) => f.write_str(name),
        }
    }
}

impl FromStr for VmRef {
    type Err = ParseAddrError;

    fn from_str(s: &str) -> Result<VmRef, ParseAddrError> {
        if let Some(vm) = WellKnownVm::from_name(s) {
            return Ok(vm.into());
        }
        if let Ok(guid) = s.parse::<Guid>() {
            return Ok(VmRef::Id(guid));
        }
        VmRef::name(s)
    }
}

// ---------------------------------------------------------------------------
// Host side

/// A host-side (AF_HYPERV, `SOCKADDR_HV`) address: a VM id and a service id.
///
/// The VM id never travels over VMBus: the host knows which partition a
/// channel belongs to. Text form: `VM:SERVICE` as for [`HostTarget`], with
/// the VM as a GUID or a well-known name (never a name to resolve).
///
/// ```
/// use hvsock::addr::{HvAddr, WellKnownVm};
/// let a = HvAddr::from_vsock_port(WellKnownVm::Parent.guid(), 5000);
/// assert_eq!(a.to_string(), "parent:5000");
/// assert_eq!("parent:0x1388".parse::<HvAddr>(), Ok(a));
/// ```
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct HvAddr {
    /// The partition: a VM's id, or a well-known id ([`WellKnownVm`]).
    pub vm_id: Guid,
    /// The service.
    pub service_id: Guid,
}

impl HvAddr {
    /// An address from its parts.
    pub const fn new(vm_id: Guid, service_id: Guid) -> HvAddr {
        HvAddr { vm_id, service_id }
    }

    /// The address of vsock port `port` in VM `vm_id`.
    pub const fn from_vsock_port(vm_id: Guid, port: u32) -> HvAddr {
        HvAddr::new(vm_id, Guid::from_vsock_port(port))
    }

    /// The vsock port of the service, if it is vsock-shaped.
    pub fn vsock_port(&self) -> Option<u32> {
        self.service_id.vsock_port()
    }
}

impl From<HvAddr> for HostTarget {
    fn from(addr: HvAddr) -> HostTarget {
        HostTarget {
            vm: VmRef::Id(addr.vm_id),
            service: ServiceId(addr.service_id),
        }
    }
}

impl TryFrom<HostTarget> for HvAddr {
    type Error = ParseAddrError;

    /// Fails for a VM given by name.
    fn try_from(target: HostTarget) -> Result<HvAddr, ParseAddrError> {
        match target.vm {
            VmRef::Id(vm_id) => Ok(HvAddr::new(vm_id, target.service.0)),
            VmRef::Name(name) => Err(ParseAddrError::VmName { name }),
        }
    }
}

impl fmt::Display for HvAddr {
    /// `VM:SERVICE`, as [`HostTarget`] writes it.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        HostTarget::from(*self).fmt(f)
    }
}

impl FromStr for HvAddr {
    type Err = ParseAddrError;

    fn from_str(s: &str) -> Result<HvAddr, ParseAddrError> {
        s.parse::<HostTarget>()?.try_into()
    }
}

/// `VM:SERVICE`: a service in a VM, as the host side's command line names
/// it.
///
/// Parsing splits on the **last** `:`: a GUID holds no `:` and a VM name may
/// not, so the split is never ambiguous.
///
/// ```
/// use hvsock::addr::{HostTarget, ServiceId, VmRef};
/// let t: HostTarget = "alpha:5000".parse().unwrap();
/// assert_eq!(t.vm, VmRef::Name("alpha".into()));
/// assert_eq!(t.service, ServiceId::from_port(5000));
/// ```
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct HostTarget {
    /// The VM.
    pub vm: VmRef,
    /// The service in it.
    pub service: ServiceId,
}

impl fmt::Display for HostTarget {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}:{}", self.vm, self.service)
    }
}

impl FromStr for HostTarget {
    type Err = ParseAddrError;

    fn from_str(s: &str) -> Result<HostTarget, ParseAddrError> {
        match s.parse::<Target>()? {
            Target {
                vm: Some(vm),
                service,
            } => Ok(HostTarget { vm, service }),
            Target { vm: None, .. } => Err(ParseAddrError::MissingVm { text: s.into() }),
        }
    }
}

/// An address as the command line takes it: `SERVICE`, or `VM:SERVICE`.
///
/// In a guest the VM is implied (it is the host); on the host a bare
/// `SERVICE` means whatever VM the context implies (see
/// [`Target::with_vm`]).
///
/// ```
/// use hvsock::addr::{Target, VmRef};
/// let t: Target = "0x1388".parse().unwrap();
/// assert_eq!(t.vm, None);
/// let h = t.with_vm(|| VmRef::Name("alpha".into()));
/// assert_eq!(h.to_string(), "alpha:5000");
/// ```
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Target {
    /// The VM, if named.
    pub vm: Option<VmRef>,
    /// The service.
    pub service: ServiceId,
}

impl Target {
    /// A [`HostTarget`], taking the VM from `implied` when none was named.
    pub fn with_vm(self, implied: impl FnOnce() -> VmRef) -> HostTarget {
        HostTarget {
            vm: self.vm.unwrap_or_else(implied),
            service: self.service,
        }
    }
}

impl From<HostTarget> for Target {
    fn from(target: HostTarget) -> Target {
        Target {
            vm: Some(target.vm),
            service: target.service,
        }
    }
}

impl fmt::Display for Target {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match &self.vm {
            Some(vm) => write!(f, "{vm}:{}", self.service),
            None => write!(f, "{}", self.service),
        }
    }
}

impl FromStr for Target {
    type Err = ParseAddrError;

    fn from_str(s: &str) -> Result<Target, ParseAddrError> {
        if s.is_empty() {
            return Err(ParseAddrError::Empty);
        }
        match s.rsplit_once(':') {
            None => Ok(Target {
                vm: None,
                service: s.parse()?,
            }),
            Some((vm, service)) => Ok(Target {
                vm: Some(vm.parse()?),
                service: service.parse()?,
            }),
        }
    }
}

// ---------------------------------------------------------------------------
// Ephemeral ports

/// First port [`EphemeralPorts`] hands out: ports up to 1023 are reserved
/// (binding them needs privilege).
pub const EPHEMERAL_FIRST: u32 = 1024;
/// One past the last port [`EphemeralPorts`] hands out; it wraps back to
/// [`EPHEMERAL_FIRST`] there.
pub const EPHEMERAL_END: u32 = 0x8000_0000;
/// How many candidate ports [`EphemeralPorts::allocate`] tries by default
/// before giving up (the bound Linux's vsock core uses).
pub const EPHEMERAL_MAX_TRIES: u32 = 24;

/// Every candidate [`EphemeralPorts::allocate`] tried was in use.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[error("no free ephemeral vsock port after {tries} tries")]
pub struct EphemeralPortsExhausted {
    /// How many ports were tried.
    pub tries: u32,
}

/// Picks the local port of a guest socket that connects without binding
/// first (sans-I/O).
///
/// As PROTOCOL.md 4.5 recommends (current Linux behaviour): a random start
/// in `[EPHEMERAL_FIRST, EPHEMERAL_END)`, then sequential, skipping ports the
/// caller reports in use (bound listeners and live connections), wrapping
/// from `EPHEMERAL_END - 1` back to `EPHEMERAL_FIRST`, and giving up after a
/// bounded number of tries. The next allocation continues after the last
/// port handed out.
///
/// ```
/// use hvsock::addr::EphemeralPorts;
/// let mut ports = EphemeralPorts::with_start(5000);
/// assert_eq!(ports.allocate(|p| p == 5001), Ok(5000));
/// assert_eq!(ports.allocate(|p| p == 5001), Ok(5002));
/// ```
#[derive(Debug, Clone)]
pub struct EphemeralPorts {
    next: u32,
    max_tries: u32,
}

impl EphemeralPorts {
    /// An allocator whose first candidate is derived from `start`: `start`
    /// itself when it is in `[EPHEMERAL_FIRST, EPHEMERAL_END)`, otherwise
    /// folded into that range. Deterministic, for tests and replay.
    pub const fn with_start(start: u32) -> EphemeralPorts {
        EphemeralPorts {
            next: fold(start),
            max_tries: EPHEMERAL_MAX_TRIES,
        }
    }

    /// An allocator with a random first candidate (seeded from std's
    /// per-process random hash keys).
    pub fn new_random() -> EphemeralPorts {
        let mut hasher = RandomState::new().build_hasher();
        hasher.write_u8(0);
        // Keeping the low 32 bits of the hash is the intent.
        EphemeralPorts::with_start(hasher.finish() as u32)
    }

    /// Sets how many candidates [`EphemeralPorts::allocate`] tries (at least
    /// one).
    pub fn max_tries(mut self, tries: u32) -> EphemeralPorts {
        self.max_tries = tries.max(1);
        self
    }

    /// The next candidate.
    pub fn peek(&self) -> u32 {
        self.next
    }

    /// Hands out a port for which `in_use` says `false`, trying sequential
    /// candidates from the last one handed out.
    pub fn allocate(
        &mut self,
        mut in_use: impl FnMut(u32) -> bool,
    ) -> Result<u32, EphemeralPortsExhausted> {
        for _ in 0..self.max_tries {
            let port = self.next;
            self.next = if port + 1 >= EPHEMERAL_END {
                EPHEMERAL_FIRST
            } else {
                port + 1
            };
            if !in_use(port) {
                return Ok(port);
            }
        }
        Err(EphemeralPortsExhausted {
            tries: self.max_tries,
        })
    }
}

/// Maps any `u32` into `[EPHEMERAL_FIRST, EPHEMERAL_END)`, leaving values
/// already in it unchanged.
const fn fold(start: u32) -> u32 {
    if start >= EPHEMERAL_FIRST && start < EPHEMERAL_END {
        start
    } else {
        EPHEMERAL_FIRST + start % (EPHEMERAL_END - EPHEMERAL_FIRST)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn fold_keeps_range() {
        assert_eq!(fold(1024), 1024);
        assert_eq!(fold(0x7FFF_FFFF), 0x7FFF_FFFF);
        for start in [0, 1, 1023, 0x8000_0000, u32::MAX] {
            assert!((EPHEMERAL_FIRST..EPHEMERAL_END).contains(&fold(start)));
        }
    }

    #[test]
    fn parse_u32_forms() {
        assert_eq!(parse_u32("0"), Some(0));
        assert_eq!(parse_u32("0x0"), Some(0));
        assert_eq!(parse_u32("0XfFfFfFfF"), Some(u32::MAX));
        assert_eq!(parse_u32("4294967295"), Some(u32::MAX));
        assert_eq!(parse_u32("4294967296"), None);
        for bad in ["", "0x", "+5", "-1", "5 ", "1_000", "0x+1", "0b1", "١"] {
            assert_eq!(parse_u32(bad), None, "{bad:?}");
        }
    }
}
