"""Operations scripts run from a checkout (``make gpu-check``): not benchmarks, not shipped in the wheel. They may
import anything of ours; nothing of ours imports them."""
