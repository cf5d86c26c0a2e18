package planner

import (
	"context"
	"fmt"

	"github.com/justrunit/justrunit"
)

// Apply executes plan's steps in order through p and stops at the first
// error. It returns the steps that completed (a prefix of plan.Steps), so a
// caller can report what was done and plan again from the site's new state.
//
// Before any step runs, Apply checks that p can do what the plan asks: a
// plan with migrations needs a justrunit.Migrator, one with power steps a
// justrunit.PowerSwitch; otherwise it returns an error wrapping
// justrunit.ErrUnsupported and does nothing. A step's error is wrapped with
// the step's number and description; a cancelled ctx stops Apply before the
// next step. Apply does not re-read the site: a plan made from a stale view
// may be refused by the platform, which checks room itself (a site's
// runtime compares State first: siterun.Site.ApplyPlan).
func Apply(ctx context.Context, plan Plan, p justrunit.Platform) ([]Step, error) {
	_, canMigrate := p.(justrunit.Migrator)
	_, canPower := p.(justrunit.PowerSwitch)
	for i, s := range plan.Steps {
		switch s.Kind {
		case Migrate:
			if !canMigrate {
				return nil, fmt.Errorf("apply plan: step %d (%s): platform %s cannot migrate instances: %w", i+1, s, p.Name(), justrunit.ErrUnsupported)
			}
		case PowerOn, PowerOff:
			if !canPower {
				return nil, fmt.Errorf("apply plan: step %d (%s): platform %s cannot switch host power: %w", i+1, s, p.Name(), justrunit.ErrUnsupported)
			}
		case SetAllocation:
			if s.Alloc == nil {
				return nil, fmt.Errorf("apply plan: step %d: %w", i+1, justrunit.Invalid(fmt.Sprintf("steps[%d].allocation", i), nil, "a set-allocation step needs an allocation"))
			}
		default:
			return nil, fmt.Errorf("apply plan: step %d: %w", i+1, justrunit.Invalid(fmt.Sprintf("steps[%d].kind", i), string(s.Kind), "want %s, %s, %s or %s", PowerOn, SetAllocation, Migrate, PowerOff))
		}
	}
	for i, s := range plan.Steps {
		if err := ctx.Err(); err != nil {
			return plan.Steps[:i], fmt.Errorf("apply plan: before step %d (%s): %w", i+1, s, err)
		}
		if err := s.Do(ctx, p); err != nil {
			return plan.Steps[:i], fmt.Errorf("apply plan: step %d of %d (%s): %w", i+1, len(plan.Steps), s, err)
		}
	}
	return plan.Steps, nil
}

// Do executes one step through p. A migrate step needs p to be a
// justrunit.Migrator and a power step a justrunit.PowerSwitch; otherwise Do
// returns an error wrapping justrunit.ErrUnsupported.
func (s Step) Do(ctx context.Context, p justrunit.Platform) error {
	switch s.Kind {
	case PowerOn, PowerOff:
		ps, ok := p.(justrunit.PowerSwitch)
		if !ok {
			return fmt.Errorf("platform %s cannot switch host power: %w", p.Name(), justrunit.ErrUnsupported)
		}
		return ps.SetPower(ctx, s.Host, s.Kind == PowerOn)
	case Migrate:
		mg, ok := p.(justrunit.Migrator)
		if !ok {
			return fmt.Errorf("platform %s cannot migrate instances: %w", p.Name(), justrunit.ErrUnsupported)
		}
		return mg.Migrate(ctx, s.Instance, s.Host)
	case SetAllocation:
		if s.Alloc == nil {
			return justrunit.Invalid("allocation", nil, "a set-allocation step needs an allocation")
		}
		return p.SetAllocation(ctx, s.Instance, *s.Alloc)
	}
	return justrunit.Invalid("kind", string(s.Kind), "want %s, %s, %s or %s", PowerOn, SetAllocation, Migrate, PowerOff)
}
