//! `rtc_offer`, `rtc_answer`, `rtc_ice_candidate`: relayed to the target connection,
//! only if it shares a room with the sender (presence says). A target on another node
//! is reached through the broker, in the first room they share, addressed to it alone.

use std::sync::Arc;

use switchboard_protocol::{ErrorKind, RtcRelay, RtcSignal};

use crate::broker::Envelope;
use crate::encode::Event;
use crate::hub::{Hub, Session, Wire};

pub(super) async fn run(hub: &Hub, session: &Session, signal: RtcSignal) -> Result<(), ErrorKind> {
    let relay = RtcRelay {
        sender_peer_id: session.client_id.to_string(),
        payload: signal.payload,
    };
    let rooms = session.rooms();
    if let Some(target) = hub.session(&signal.target_peer_id) {
        let fits = target.wire != Wire::Sse
            && (target.wire == Wire::SocketIoRtc) == (session.wire == Wire::SocketIoRtc);
        let shared = fits
            && hub
                .presence()
                .in_any(&target.client_id, &rooms)
                .await
                .map_err(|e| super::internal("presence", e))?;
        if !shared {
            return Err(ErrorKind::TargetPeerNotFound);
        }
        target.reply(signal.kind.as_str(), &relay, None);
        return Ok(());
    }
    // Elsewhere in the cluster, if anywhere: the first room both are in carries it.
    for room in rooms {
        let there = hub
            .presence()
            .in_any(&signal.target_peer_id, std::slice::from_ref(&room))
            .await
            .map_err(|e| super::internal("presence", e))?;
        if there {
            let env = Envelope {
                only: Some(Arc::from(signal.target_peer_id.as_str())),
                ..Envelope::new(room, Arc::new(Event::new(signal.kind.as_str(), &relay)))
            };
            hub.broker()
                .publish(env)
                .await
                .map_err(|e| super::internal("relaying a signal", e))?;
            return Ok(());
        }
    }
    Err(ErrorKind::TargetPeerNotFound)
}
