//! The guest's VMBus client, sans-I/O: version negotiation, offers, and the
//! life of each channel (GPADL, open, close, teardown, relid release), as a
//! state machine that takes messages and commands and queues outputs.
//!
//! It owns the VMBus side of a guest; it does not decide which offers to
//! accept or what a channel carries (the `hvsock` crate does), creates no
//! memory (the caller passes the rings' memfd in), does no I/O, and knows
//! nothing of signals: those travel over the link the host sets up for each
//! pair of processes ([`ExtEvent::Link`](crate::ext::ExtEvent::Link) and
//! [`ExtEvent::ChannelLink`](crate::ext::ExtEvent::ChannelLink), extension
//! events the application handles), so OPENCHANNEL carries no descriptor.
//!
//! Order of use: [`GuestClient::start`], then feed every message from the
//! host to [`GuestClient::handle`], call the commands ([`tl_connect`],
//! [`open`], [`close`]) as the application needs, and after each call drain
//! [`GuestClient::poll_output`]: `Send` outputs go to the host in order,
//! `Event`s to the application.
//!
//! [`tl_connect`]: GuestClient::tl_connect
//! [`open`]: GuestClient::open
//! [`close`]: GuestClient::close

#[cfg(test)]
mod tests;

use std::collections::{HashMap, VecDeque};
use std::os::fd::OwnedFd;
use std::sync::Arc;

use crate::ext::RingLayout;
use crate::messages::{
    Gpadl, Guid, InitiateContact, Message, OfferChannel, OpenChannel, TlConnectRequest,
    FIRST_LINUX_GPADL_HANDLE, MESSAGE_SINT, USER_DEFINED_SIZE, VERSION_WIN10, VERSION_WIN10_V4_1,
    VERSION_WIN10_V5, VERSION_WIN10_V5_1, VERSION_WIN10_V5_2, VERSION_WIN10_V5_3,
};

/// The versions a guest proposes, newest first. hv_sock needs at least
/// WIN10 (4.0).
pub const PROPOSED_VERSIONS: [u32; 6] = [
    VERSION_WIN10_V5_3,
    VERSION_WIN10_V5_2,
    VERSION_WIN10_V5_1,
    VERSION_WIN10_V5,
    VERSION_WIN10_V4_1,
    VERSION_WIN10,
];

/// What the client wants done.
#[derive(Debug)]
pub enum Output {
    /// Send this message to the host, with these fds (SCM_RIGHTS).
    Send {
        /// The message.
        message: Message,
        /// File descriptors that travel with it.
        fds: Vec<Arc<OwnedFd>>,
    },
    /// Tell the application.
    Event(Event),
}

/// Something the application learns.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Event {
    /// A version was agreed and the initial offers were delivered.
    Connected {
        /// The negotiated version.
        version: u32,
    },
    /// The host accepts none of our versions.
    ContactRefused,
    /// The host offers a channel. Answer with [`GuestClient::open`] or
    /// [`GuestClient::close`] (which refuses it).
    Offer(OfferChannel),
    /// The host refused a TL connect request.
    TlConnectRefused {
        /// The request's guest endpoint id.
        endpoint_id: Guid,
        /// The request's host service id.
        service_id: Guid,
        /// The NTSTATUS.
        status: u32,
    },
    /// An open finished; `status` 0 means the channel is open.
    Opened {
        /// The channel.
        relid: u32,
        /// The NTSTATUS of the GPADL or the open.
        status: u32,
    },
    /// The host rescinded the channel. Whatever its state, the application
    /// must [`close`](GuestClient::close) it to release the relid.
    Rescinded {
        /// The channel.
        relid: u32,
    },
    /// The channel is gone for good: its relid was released.
    Released {
        /// The channel.
        relid: u32,
    },
}

/// A message from the host that breaks the protocol.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ClientError {
    /// A message a host never sends, or one that comes before contact.
    #[error("unexpected {0:?} from the host")]
    Unexpected(crate::messages::MessageType),
    /// A message names a channel we do not have.
    #[error("the host named relid {0}, which is not a channel of ours")]
    UnknownRelid(u32),
    /// An offer reuses a relid still in use; the existing channel is kept.
    #[error("the host offered relid {0}, which is still in use")]
    RelidInUse(u32),
    /// A GPADL answer names a handle we did not send.
    #[error("the host answered for GPADL {0:#x}, which we did not create")]
    UnknownGpadl(u32),
    /// A command named a channel in the wrong state.
    #[error("channel {relid} is {state}, so it cannot be {action}")]
    WrongState {
        /// The channel.
        relid: u32,
        /// Its state.
        state: &'static str,
        /// What was asked.
        action: &'static str,
    },
    /// The rings do not fit a GPADL.
    #[error("invalid ring layout: {0}")]
    Layout(String),
    /// The negotiated version is too old for this operation.
    #[error("not connected to the host yet")]
    NotConnected,
}

/// Where the connection with the host stands.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Contact {
    Idle,
    /// INITIATE_CONTACT sent with `PROPOSED_VERSIONS[i]`.
    Proposing(usize),
    /// Version agreed, REQUESTOFFERS sent.
    RequestingOffers(u32),
    Ready(u32),
    Refused,
}

/// The GPADL and layout of a channel being opened or open. The memfd is
/// not kept: it leaves with GPADL_HEADER, and the caller holds the mapping.
#[derive(Debug)]
struct Rings {
    gpadl: u32,
    layout: RingLayout,
}

#[derive(Debug)]
enum State {
    Offered,
    /// GPADL_HEADER (and bodies) sent.
    GpadlSent(Rings),
    /// OPENCHANNEL sent; the GPADL's answer as far as it came.
    OpenSent(Rings, GpadlAnswer),
    /// OPENCHANNEL_RESULT said no; the GPADL stays until the application
    /// closes the channel.
    OpenFailed(Rings),
    Open(Rings),
    /// Closed by the application while the host still owed answers about
    /// its open: what must be torn down depends on them, so nothing is sent
    /// until they are in (a teardown of a GPADL the host never created
    /// would be a protocol violation).
    Abandoned {
        gpadl: u32,
        answer: GpadlAnswer,
        open: OpenAnswer,
    },
    /// CLOSECHANNEL and/or GPADL_TEARDOWN sent; waiting for the torndown
    /// answer (if `gpadl` is some) and the rescind, or, if `refuse` (the
    /// channel never opened), only for the torndown answer: then the offer
    /// is refused by releasing its relid.
    Closing {
        gpadl: Option<u32>,
        refuse: bool,
    },
}

/// The host's OPENCHANNEL_RESULT for an abandoned open.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum OpenAnswer {
    /// OPENCHANNEL was never sent.
    NotSent,
    /// Sent; no answer yet.
    Pending,
    /// The channel opened.
    Opened,
    /// The open failed.
    Refused,
}

impl State {
    fn name(&self) -> &'static str {
        match self {
            State::Offered => "offered",
            State::GpadlSent(_) => "creating its GPADL",
            State::OpenSent(..) | State::Abandoned { .. } => "opening",
            State::OpenFailed(_) => "failed to open",
            State::Open(_) => "open",
            State::Closing { .. } => "closing",
        }
    }
}

/// The host's GPADL_CREATED for a channel whose OPENCHANNEL is sent.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum GpadlAnswer {
    /// Created: OPENCHANNEL went after it (the Linux sequence), or it came
    /// after a pipelined OPENCHANNEL.
    Created,
    /// OPENCHANNEL went right behind the GPADL; GPADL_CREATED is due first.
    Pending,
    /// The GPADL failed with this status; the open's failure (or a rescind)
    /// is due.
    Failed(u32),
}

#[derive(Debug)]
struct Channel {
    state: State,
    rescinded: bool,
}

/// The guest's VMBus client.
#[derive(Debug)]
pub struct GuestClient {
    contact: Contact,
    channels: HashMap<u32, Channel>,
    next_gpadl: u32,
    output: VecDeque<Output>,
    pipelined_open: bool,
}

impl Default for GuestClient {
    fn default() -> Self {
        Self::new()
    }
}

impl GuestClient {
    /// A client that has not contacted the host yet.
    pub fn new() -> Self {
        Self {
            contact: Contact::Idle,
            channels: HashMap::new(),
            next_gpadl: FIRST_LINUX_GPADL_HANDLE,
            output: VecDeque::new(),
            pipelined_open: false,
        }
    }

    /// Whether [`open`](Self::open) sends OPENCHANNEL right behind the GPADL
    /// instead of waiting for GPADL_CREATED as Linux does. Only for a host
    /// that said it takes that
    /// ([`FEATURE_PIPELINED_OPEN`](crate::ext::FEATURE_PIPELINED_OPEN)); off
    /// by default. Applies to opens that start afterwards.
    pub fn set_pipelined_open(&mut self, pipelined: bool) {
        self.pipelined_open = pipelined;
    }

    /// The negotiated version, once connected.
    pub fn version(&self) -> Option<u32> {
        match self.contact {
            Contact::Ready(v) | Contact::RequestingOffers(v) => Some(v),
            _ => None,
        }
    }

    /// Channels not yet released.
    pub fn channel_count(&self) -> usize {
        self.channels.len()
    }

    /// The next output, if any.
    pub fn poll_output(&mut self) -> Option<Output> {
        self.output.pop_front()
    }

    /// Starts the version negotiation.
    pub fn start(&mut self) {
        self.propose(0);
    }

    fn propose(&mut self, index: usize) {
        self.contact = Contact::Proposing(index);
        let version = PROPOSED_VERSIONS[index];
        // From 5.0 on, the bytes at 16.. name the message SINT instead of an
        // interrupt page.
        let target_info = if version >= VERSION_WIN10_V5 {
            InitiateContact::target_info(MESSAGE_SINT, 0, 0)
        } else {
            0
        };
        self.send(Message::InitiateContact(InitiateContact {
            vmbus_version_requested: version,
            target_vcpu: 0,
            interrupt_page_or_target_info: target_info,
            parent_to_child_monitor_page_gpa: 0,
            child_to_parent_monitor_page_gpa: 0,
            client_id: None,
        }));
    }

    /// Asks the host to connect guest endpoint `endpoint_id` to host service
    /// `service_id`. The answer is an [`Event::Offer`] whose `if_instance`
    /// and `if_type` are these ids, or [`Event::TlConnectRefused`].
    pub fn tl_connect(&mut self, endpoint_id: Guid, service_id: Guid) -> Result<(), ClientError> {
        if !matches!(self.contact, Contact::Ready(_)) {
            return Err(ClientError::NotConnected);
        }
        self.send(Message::TlConnectRequest(TlConnectRequest {
            guest_endpoint_id: endpoint_id,
            host_service_id: service_id,
            silo_id: None,
        }));
        Ok(())
    }

    /// Opens an offered channel on rings in `memfd` (page `i` of the memfd is
    /// GPADL page `i`): describes them with a GPADL (the memfd travels with
    /// GPADL_HEADER), then, once the host has created it (or at once, see
    /// [`set_pipelined_open`](Self::set_pipelined_open)), sends
    /// OPENCHANNEL, which carries no descriptor. The result comes as
    /// [`Event::Opened`]; on success the host has sent the channel's link
    /// just before it.
    pub fn open(
        &mut self,
        relid: u32,
        memfd: Arc<OwnedFd>,
        layout: RingLayout,
    ) -> Result<(), ClientError> {
        let channel = self.channel_mut(relid)?;
        if channel.rescinded || !matches!(channel.state, State::Offered) {
            return Err(ClientError::WrongState {
                relid,
                state: if channel.rescinded {
                    "rescinded"
                } else {
                    channel.state.name()
                },
                action: "opened",
            });
        }
        let RingLayout {
            total_pages,
            guest_to_host_pages,
        } = layout;
        if guest_to_host_pages < 2 || total_pages < guest_to_host_pages + 2 {
            return Err(ClientError::Layout(format!(
                "{total_pages} pages with {guest_to_host_pages} for the guest -> host ring: each ring needs at least 2"
            )));
        }
        let gpadl = self.allocate_gpadl();
        let messages = Gpadl::ring(relid, gpadl, (0..u64::from(total_pages)).collect())
            .to_messages()
            .map_err(|e| ClientError::Layout(e.to_string()))?;
        let mut fds = vec![memfd];
        for message in messages {
            self.output.push_back(Output::Send {
                message,
                fds: std::mem::take(&mut fds),
            });
        }
        let rings = Rings { gpadl, layout };
        self.channel_mut(relid)?.state = if self.pipelined_open {
            self.send(open_channel(relid, &rings));
            State::OpenSent(rings, GpadlAnswer::Pending)
        } else {
            State::GpadlSent(rings)
        };
        Ok(())
    }

    /// Closes a channel in any state: refuses an offer, abandons an open
    /// (once the host has answered what it was sent: only then is it known
    /// what exists to tear down), or tears down an open channel
    /// (CLOSECHANNEL, GPADL_TEARDOWN, then RELID_RELEASED once the host has
    /// rescinded it). A channel that never opened is released as soon as
    /// its GPADL is torn down, without waiting for a rescind. Ends with
    /// [`Event::Released`].
    pub fn close(&mut self, relid: u32) -> Result<(), ClientError> {
        let channel = self.channel_mut(relid)?;
        let rescinded = channel.rescinded;
        let was_offered = matches!(channel.state, State::Offered);
        if matches!(
            channel.state,
            State::Closing { .. } | State::Abandoned { .. }
        ) {
            return Ok(());
        }
        if was_offered || rescinded {
            // Never opened, or the host has withdrawn it: only the relid is
            // left to give back (Linux skips the GPADL teardown after a
            // rescind).
            if !was_offered {
                self.send(Message::CloseChannel { child_relid: relid });
            }
            self.release(relid);
            return Ok(());
        }
        let abandoned = |rings: &Rings, answer, open| State::Abandoned {
            gpadl: rings.gpadl,
            answer,
            open,
        };
        channel.state = match std::mem::replace(&mut channel.state, State::Offered) {
            State::GpadlSent(rings) => abandoned(&rings, GpadlAnswer::Pending, OpenAnswer::NotSent),
            State::OpenSent(rings, answer @ (GpadlAnswer::Pending | GpadlAnswer::Failed(_))) => {
                abandoned(&rings, answer, OpenAnswer::Pending)
            }
            State::OpenSent(rings, GpadlAnswer::Created) => {
                abandoned(&rings, GpadlAnswer::Created, OpenAnswer::Pending)
            }
            State::Open(rings) => abandoned(&rings, GpadlAnswer::Created, OpenAnswer::Opened),
            State::OpenFailed(rings) => {
                abandoned(&rings, GpadlAnswer::Created, OpenAnswer::Refused)
            }
            State::Offered | State::Abandoned { .. } | State::Closing { .. } => {
                unreachable!("returned above")
            }
        };
        self.settle(relid)
    }

    /// Sends what an abandoned open's close needs once the host's answers
    /// are in: nothing but the relid if the GPADL failed, GPADL_TEARDOWN
    /// if it exists, and CLOSECHANNEL first if the channel opened.
    fn settle(&mut self, relid: u32) -> Result<(), ClientError> {
        let channel = self.channel_mut(relid)?;
        let State::Abandoned {
            gpadl,
            answer,
            open,
        } = channel.state
        else {
            return Ok(());
        };
        match (answer, open) {
            (GpadlAnswer::Pending, _) | (_, OpenAnswer::Pending) => {}
            (GpadlAnswer::Failed(_), _) => self.release(relid),
            (GpadlAnswer::Created, open) => {
                let opened = open == OpenAnswer::Opened;
                channel.state = State::Closing {
                    gpadl: Some(gpadl),
                    refuse: !opened,
                };
                if opened {
                    self.send(Message::CloseChannel { child_relid: relid });
                }
                self.send(Message::GpadlTeardown {
                    child_relid: relid,
                    gpadl,
                });
            }
        }
        Ok(())
    }

    /// Handles a message from the host.
    pub fn handle(&mut self, message: Message) -> Result<(), ClientError> {
        let ty = message.message_type();
        match message {
            Message::VersionResponse(response) => {
                let Contact::Proposing(index) = self.contact else {
                    return Err(ClientError::Unexpected(ty));
                };
                if response.version_supported {
                    let version = PROPOSED_VERSIONS[index];
                    self.contact = Contact::RequestingOffers(version);
                    self.send(Message::RequestOffers);
                } else if index + 1 < PROPOSED_VERSIONS.len() {
                    self.propose(index + 1);
                } else {
                    self.contact = Contact::Refused;
                    self.event(Event::ContactRefused);
                }
            }
            Message::AllOffersDelivered => {
                let Contact::RequestingOffers(version) = self.contact else {
                    return Err(ClientError::Unexpected(ty));
                };
                self.contact = Contact::Ready(version);
                self.event(Event::Connected { version });
            }
            Message::OfferChannel(offer) => {
                self.require_contact(ty)?;
                let relid = offer.child_relid;
                if self.channels.contains_key(&relid) {
                    return Err(ClientError::RelidInUse(relid));
                }
                self.channels.insert(
                    relid,
                    Channel {
                        state: State::Offered,
                        rescinded: false,
                    },
                );
                self.event(Event::Offer(offer));
            }
            Message::TlConnectResult(result) => {
                self.require_contact(ty)?;
                self.event(Event::TlConnectRefused {
                    endpoint_id: result.endpoint_id,
                    service_id: result.service_id,
                    status: result.status,
                });
            }
            Message::GpadlCreated {
                child_relid,
                gpadl,
                creation_status,
            } => self.gpadl_created(child_relid, gpadl, creation_status)?,
            Message::OpenChannelResult {
                child_relid,
                status,
                ..
            } => self.open_result(child_relid, status)?,
            Message::RescindChannelOffer { child_relid } => self.rescinded(child_relid)?,
            Message::GpadlTorndown { gpadl } => self.torndown(gpadl)?,
            Message::UnloadResponse => {}
            other => return Err(ClientError::Unexpected(other.message_type())),
        }
        Ok(())
    }

    fn gpadl_created(&mut self, relid: u32, gpadl: u32, status: u32) -> Result<(), ClientError> {
        let channel = self.channel_mut(relid)?;
        match &mut channel.state {
            State::GpadlSent(rings) if rings.gpadl == gpadl => {
                if status != 0 {
                    // The host kept nothing; the channel is back to
                    // "offered" for the application to close.
                    channel.state = State::Offered;
                    self.event(Event::Opened { relid, status });
                    return Ok(());
                }
                let State::GpadlSent(rings) = std::mem::replace(&mut channel.state, State::Offered)
                else {
                    unreachable!("matched above");
                };
                let message = open_channel(relid, &rings);
                channel.state = State::OpenSent(rings, GpadlAnswer::Created);
                self.send(message);
                Ok(())
            }
            State::OpenSent(rings, answer @ GpadlAnswer::Pending) if rings.gpadl == gpadl => {
                // Pipelined: the open's result follows and tells the
                // application.
                *answer = if status == 0 {
                    GpadlAnswer::Created
                } else {
                    GpadlAnswer::Failed(status)
                };
                Ok(())
            }
            State::Abandoned {
                gpadl: g,
                answer: answer @ GpadlAnswer::Pending,
                ..
            } if *g == gpadl => {
                *answer = if status == 0 {
                    GpadlAnswer::Created
                } else {
                    GpadlAnswer::Failed(status)
                };
                self.settle(relid)
            }
            _ => Err(ClientError::UnknownGpadl(gpadl)),
        }
    }

    fn open_result(&mut self, relid: u32, status: u32) -> Result<(), ClientError> {
        let channel = self.channel_mut(relid)?;
        let unexpected = Err(ClientError::Unexpected(
            crate::messages::MessageType::OPENCHANNEL_RESULT,
        ));
        let answer = match &mut channel.state {
            State::OpenSent(_, answer) => *answer,
            State::Abandoned {
                answer,
                open: open @ OpenAnswer::Pending,
                ..
            } => {
                if *answer == GpadlAnswer::Pending {
                    return unexpected;
                }
                *open = if status == 0 {
                    OpenAnswer::Opened
                } else {
                    OpenAnswer::Refused
                };
                return self.settle(relid);
            }
            _ => return unexpected,
        };
        match answer {
            GpadlAnswer::Pending => unexpected,
            GpadlAnswer::Failed(gpadl_status) => {
                // No GPADL, so nothing to tear down: back to "offered".
                channel.state = State::Offered;
                self.event(Event::Opened {
                    relid,
                    status: gpadl_status,
                });
                if status == 0 {
                    // An open on a GPADL that failed cannot have worked.
                    return unexpected;
                }
                Ok(())
            }
            GpadlAnswer::Created => {
                if let State::OpenSent(rings, _) =
                    std::mem::replace(&mut channel.state, State::Offered)
                {
                    // On failure the GPADL still exists: the application
                    // closes the channel, which tears it down.
                    channel.state = if status == 0 {
                        State::Open(rings)
                    } else {
                        State::OpenFailed(rings)
                    };
                }
                self.event(Event::Opened { relid, status });
                Ok(())
            }
        }
    }

    fn rescinded(&mut self, relid: u32) -> Result<(), ClientError> {
        let channel = self.channel_mut(relid)?;
        if channel.rescinded {
            return Err(ClientError::Unexpected(
                crate::messages::MessageType::RESCIND_CHANNELOFFER,
            ));
        }
        channel.rescinded = true;
        match channel.state {
            State::Closing { gpadl: None, .. } => self.release(relid),
            State::Closing { .. } => {}
            // The application closed it already: as a close after a
            // rescind, give the relid back without a teardown.
            State::Abandoned { .. } => {
                self.send(Message::CloseChannel { child_relid: relid });
                self.release(relid);
            }
            _ => self.event(Event::Rescinded { relid }),
        }
        Ok(())
    }

    fn torndown(&mut self, gpadl: u32) -> Result<(), ClientError> {
        let found = self
            .channels
            .iter_mut()
            .find_map(|(&relid, channel)| match channel.state {
                State::Closing {
                    gpadl: Some(g),
                    refuse,
                } if g == gpadl => {
                    channel.state = State::Closing {
                        gpadl: None,
                        refuse,
                    };
                    Some((relid, channel.rescinded || refuse))
                }
                _ => None,
            });
        match found {
            Some((relid, true)) => {
                self.release(relid);
                Ok(())
            }
            Some((_, false)) => Ok(()),
            None => Err(ClientError::UnknownGpadl(gpadl)),
        }
    }

    fn release(&mut self, relid: u32) {
        self.channels.remove(&relid);
        self.send(Message::RelidReleased { child_relid: relid });
        self.event(Event::Released { relid });
    }

    fn require_contact(&self, ty: crate::messages::MessageType) -> Result<(), ClientError> {
        match self.contact {
            Contact::Ready(_) | Contact::RequestingOffers(_) => Ok(()),
            _ => Err(ClientError::Unexpected(ty)),
        }
    }

    fn channel_mut(&mut self, relid: u32) -> Result<&mut Channel, ClientError> {
        self.channels
            .get_mut(&relid)
            .ok_or(ClientError::UnknownRelid(relid))
    }

    fn allocate_gpadl(&mut self) -> u32 {
        let handle = self.next_gpadl;
        self.next_gpadl = self.next_gpadl.wrapping_add(1).max(1);
        handle
    }

    fn send(&mut self, message: Message) {
        self.output.push_back(Output::Send {
            message,
            fds: Vec::new(),
        });
    }

    fn event(&mut self, event: Event) {
        self.output.push_back(Output::Event(event));
    }
}

/// The OPENCHANNEL of a channel on `rings`.
fn open_channel(relid: u32, rings: &Rings) -> Message {
    Message::OpenChannel(OpenChannel {
        child_relid: relid,
        openid: relid,
        ringbuffer_gpadlhandle: rings.gpadl,
        target_vp: 0,
        downstream_ringbuffer_pageoffset: rings.layout.guest_to_host_pages,
        userdata: [0; USER_DEFINED_SIZE],
        guest_signal: None,
    })
}
