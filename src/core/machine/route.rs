//! A route's progress: the one rule for when a route asked for is in effect, used by Routing
//! (traffic to Aurora) and by a rollback after cutover (traffic back to the source).
//!
//! A router answers a route request in effect (the webhook's 2xx) or accepted and propagating
//! with a change to ask after (Route 53's change id, `PENDING` until `INSYNC`). A propagating
//! change is recorded (`Progress::route_change`) and its status read on every look
//! (`Needs::route_change`) until it is in effect; a failed status read is an error to report and
//! retry, not a failed route. How long this may take is the phase's timeout: Routing's fails the
//! migration with the source still fenced (Aurora is promoted, so nothing is undone by itself),
//! the rollback's alerts and keeps trying.

use super::*;
use crate::core::action::ActionOutput;
use crate::core::router::RouteProgress;

/// How often a propagating route is asked after: Route 53 reports `INSYNC` within about a minute
/// (usually seconds), and the outage lasts until it does.
pub(super) const ROUTE_POLL: SignedDuration = SignedDuration::from_secs(1);

/// What `needs` reads for a migration whose route is propagating: the router and the change.
pub(super) fn needs(m: &Migration, n: &mut Needs) {
    let waiting = match m.phase {
        Phase::Routing => m.progress.routed_at.is_none(),
        Phase::RollingBack => m.progress.routed_back_at.is_none(),
        _ => false,
    };
    if let (true, Some(change), Some(plan)) = (waiting, &m.progress.route_change, &m.plan) {
        n.route_change = Some((plan.router.clone(), change.clone()));
    }
}

impl Stepper<'_> {
    /// True when the route this phase asked for is in effect: its request answered so in this
    /// step's results, or its change read in effect on this look. Records a propagating change
    /// and asks to look again soon.
    pub(super) fn route_in_effect(&mut self) -> bool {
        let answered: Vec<Option<ActionOutput>> = self
            .obs
            .action_results
            .iter()
            .filter(|r| r.key == ActionKey::RouteTraffic && r.outcome.is_ok())
            .map(|r| r.output.clone())
            .collect();
        for output in answered {
            match output {
                Some(ActionOutput::Route(RouteProgress::Propagating { change })) => {
                    self.m.progress.route_change = Some(change);
                }
                // In effect (a router without propagation; records from before routers).
                _ => {
                    self.m.progress.route_change = None;
                    return true;
                }
            }
        }
        if self.m.progress.route_change.is_none() {
            return false;
        }
        match self.obs.route_status.clone() {
            Some(Ok(RouteProgress::InEffect)) => {
                self.m.progress.route_change = None;
                return true;
            }
            Some(Ok(RouteProgress::Propagating { .. })) | None => {}
            Some(Err(e)) => {
                self.m.last_error = Some(format!("the route's progress could not be read: {e}"));
            }
        }
        self.wake_within(ROUTE_POLL);
        false
    }
}
