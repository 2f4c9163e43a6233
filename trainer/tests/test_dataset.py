"""Instance/caption pairing and class-image bookkeeping."""

import io
import os
import tempfile
import unittest

from booth_trainer.dataset import class_image_name, missing_class_names, scan_class_images, scan_instances
from booth_trainer.errors import TrainerError


def touch(path, data=b"\x89PNG fake"):
    with open(path, "wb") as f:
        f.write(data)


class Pairing(unittest.TestCase):
    def setUp(self):
        self.tmp = tempfile.TemporaryDirectory()
        self.dir = self.tmp.name

    def tearDown(self):
        self.tmp.cleanup()

    def test_images_pair_with_same_named_captions_in_sorted_order(self):
        touch(os.path.join(self.dir, "b.jpg"))
        touch(os.path.join(self.dir, "a.png"))
        touch(os.path.join(self.dir, "c.WEBP"))
        touch(os.path.join(self.dir, "notes.md"))
        for n, text in (("a", "photo of ohwx man, smiling\n"), ("b", "ohwx man outdoors"), ("c", "ohwx man")):
            with open(os.path.join(self.dir, n + ".txt"), "w", encoding="utf-8") as f:
                f.write(text)
        log = io.StringIO()
        listing = scan_instances(self.dir, "photo of ohwx man", log=log)
        self.assertEqual([(i.name, i.caption) for i in listing.items], [("a.png", "photo of ohwx man, smiling"), ("b.jpg", "ohwx man outdoors"), ("c.WEBP", "ohwx man")])
        self.assertEqual(log.getvalue(), "")

    def test_missing_or_empty_caption_falls_back_with_a_warning(self):
        touch(os.path.join(self.dir, "1.png"))
        touch(os.path.join(self.dir, "2.png"))
        open(os.path.join(self.dir, "2.txt"), "w").close()
        log = io.StringIO()
        listing = scan_instances(self.dir, "photo of ohwx man", log=log)
        self.assertEqual([i.caption for i in listing.items], ["photo of ohwx man", "photo of ohwx man"])
        self.assertEqual(listing.missing_captions, ["1.png", "2.png"])
        self.assertIn("warning: 1.png has no caption", log.getvalue())

    def test_prompt_mode_ignores_caption_files(self):
        touch(os.path.join(self.dir, "1.png"))
        with open(os.path.join(self.dir, "1.txt"), "w") as f:
            f.write("something else")
        listing = scan_instances(self.dir, "photo of sks dog", captions="prompt", log=io.StringIO())
        self.assertEqual(listing.items[0].caption, "photo of sks dog")
        self.assertEqual(listing.missing_captions, [])

    def test_unreadable_pairs_are_reported_and_left_out(self):
        touch(os.path.join(self.dir, "good.png"))
        touch(os.path.join(self.dir, "empty.png"), b"")
        touch(os.path.join(self.dir, "latin.png"))
        with open(os.path.join(self.dir, "latin.txt"), "wb") as f:
            f.write(b"caf\xe9 \xff")
        log = io.StringIO()
        listing = scan_instances(self.dir, "p", log=log)
        self.assertEqual([i.name for i in listing.items], ["good.png"])
        reasons = dict(listing.unreadable)
        self.assertEqual(reasons["empty.png"], "the image file is empty")
        self.assertIn("latin.txt is unreadable", reasons["latin.png"])
        self.assertIn("warning: leaving out latin.png", log.getvalue())

    def test_no_usable_image_is_a_data_error(self):
        with self.assertRaises(TrainerError) as cm:
            scan_instances(self.dir, "p", log=io.StringIO())
        self.assertEqual(cm.exception.kind, "data")
        self.assertIn("no usable instance images", cm.exception.message)
        with self.assertRaises(TrainerError) as cm:
            scan_instances(os.path.join(self.dir, "nope"), "p", log=io.StringIO())
        self.assertIn("does not exist", cm.exception.message)


class ClassImages(unittest.TestCase):
    def test_missing_names_continue_an_interrupted_generation(self):
        with tempfile.TemporaryDirectory() as d:
            self.assertEqual(missing_class_names(d, 3), [class_image_name(0), class_image_name(1), class_image_name(2)])
            touch(os.path.join(d, class_image_name(0)))
            touch(os.path.join(d, "supplied.jpg"))
            touch(os.path.join(d, class_image_name(1) + ".tmp"))
            self.assertEqual(missing_class_names(d, 4), ["class-00001.png", "class-00002.png"])
            self.assertEqual(missing_class_names(d, 2), [])
            items = scan_class_images(d, "photo of a dog")
            self.assertEqual([(i.name, i.caption) for i in items], [("class-00000.png", "photo of a dog"), ("supplied.jpg", "photo of a dog")])
            self.assertEqual(missing_class_names(os.path.join(d, "new"), 1), ["class-00000.png"])


if __name__ == "__main__":
    unittest.main()
