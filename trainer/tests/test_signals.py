"""Stop signals at function level, in this process and in a real child process."""

import os
import signal
import subprocess
import sys
import textwrap
import time
import unittest

from booth_trainer.errors import Preempted
from booth_trainer.signals import StopSignals

TRAINER_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


class InProcess(unittest.TestCase):
    def setUp(self):
        self.s = StopSignals().install()

    def tearDown(self):
        self.s.uninstall()

    def test_early_signal_raises_preempted(self):
        with self.assertRaises(Preempted) as cm:
            os.kill(os.getpid(), signal.SIGUSR1)
            time.sleep(1)  # the handler runs at the next bytecode boundary
        self.assertEqual(cm.exception.signal_name, "SIGUSR1")
        self.assertIsNone(cm.exception.state)

    def test_preempted_is_not_an_exception(self):
        # Library code that catches Exception must not swallow a stop request.
        self.assertFalse(issubclass(Preempted, Exception))

    def test_training_phase_only_records_and_keeps_the_first(self):
        self.s.start_training()
        os.kill(os.getpid(), signal.SIGTERM)
        os.kill(os.getpid(), signal.SIGUSR1)
        self.assertEqual(self.s.requested, "SIGTERM")

    def test_saving_phase_ignores_further_signals(self):
        self.s.start_training()
        with self.s.saving():
            os.kill(os.getpid(), signal.SIGTERM)
            self.assertEqual(self.s.phase, "saving")
        self.assertEqual(self.s.phase, "training")
        self.assertEqual(self.s.requested, "SIGTERM")

    def test_deferred_raises_after_the_protected_block(self):
        done = []
        with self.assertRaises(Preempted):
            with self.s.deferred():
                os.kill(os.getpid(), signal.SIGTERM)
                time.sleep(0.05)
                done.append(True)
        self.assertEqual(done, [True])

    def test_uninstall_restores_previous_handlers(self):
        self.s.uninstall()
        self.assertIs(signal.getsignal(signal.SIGUSR1), signal.SIG_DFL)


CHILD = textwrap.dedent(
    """
    import sys, time
    from booth_trainer import EXIT_PREEMPTED
    from booth_trainer.errors import Preempted
    from booth_trainer.progress import Emitter
    from booth_trainer.signals import StopSignals

    e = Emitter()
    s = StopSignals().install()
    mode = sys.argv[1]
    try:
        if mode == "early":
            e.emit("ready")
            time.sleep(30)
        s.start_training()
        e.emit("ready")
        step = 0
        while step < 10000:
            time.sleep(0.01)  # one "optimizer step"
            step += 1
            if s.requested:
                with s.saving():
                    time.sleep(0.2)  # a second signal arrives while saving
                e.emit("preempted", step=step, signal=s.requested, state=f"state/{step}")
                sys.exit(EXIT_PREEMPTED)
        sys.exit(0)
    except Preempted as p:
        e.emit("preempted", step=0, signal=p.signal_name, state=None)
        sys.exit(EXIT_PREEMPTED)
    """
)


class ChildProcess(unittest.TestCase):
    def run_child(self, mode, signals):
        env = dict(os.environ, PYTHONPATH=TRAINER_ROOT + os.pathsep + os.environ.get("PYTHONPATH", ""))
        p = subprocess.Popen([sys.executable, "-c", CHILD, mode], stdout=subprocess.PIPE, stderr=subprocess.PIPE, env=env, text=True)
        try:
            self.assertIn('"event":"ready"', p.stdout.readline())
            for sig in signals:
                p.send_signal(sig)
                time.sleep(0.05)
            out, err = p.communicate(timeout=20)
        finally:
            if p.poll() is None:
                p.kill()
        return p.returncode, out, err

    def test_sigterm_during_training_finishes_the_step_and_exits_75(self):
        code, out, err = self.run_child("training", [signal.SIGTERM, signal.SIGUSR1])
        self.assertEqual(code, 75, err)
        self.assertIn('"signal":"SIGTERM"', out)
        self.assertIn('"state":"state/', out)

    def test_signal_before_training_exits_75_without_a_state(self):
        code, out, err = self.run_child("early", [signal.SIGUSR1])
        self.assertEqual(code, 75, err)
        self.assertIn('"signal":"SIGUSR1","state":null', out)


if __name__ == "__main__":
    unittest.main()
