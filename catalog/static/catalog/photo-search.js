// Search by photo, progressively enhanced (plain JavaScript, no library). Without it the page is a
// plain form: a file input and four optional number fields for the box (catalog/cropping.py).
// With it: drag a file onto the drop zone; once a photo is chosen it is shown and the shopper can
// drag across it (mouse, pen or finger: pointer events) to draw the box, which fills the four
// fields. The fields stay the one source of truth (typing in them moves the drawn box), so what is
// sent is what the page shows. The photo never leaves the browser until the form is submitted.
(function () {
  "use strict";
  var form = document.getElementById("photo-form"),
      zone = document.getElementById("dropzone"),
      input = document.getElementById("photo-input"),
      text = document.getElementById("dropzone-text");
  if (!form || !zone || !input) return;

  var stage = document.getElementById("box-stage"),
      canvas = document.getElementById("box-canvas"),
      image = document.getElementById("box-image"),
      rect = document.getElementById("box-rect"),
      clear = document.getElementById("box-clear"),
      fields = {x: form.elements.box_x, y: form.elements.box_y,
                width: form.elements.box_width, height: form.elements.box_height},
      minSide = parseFloat(stage && stage.getAttribute("data-min-side")) || 0.05,
      photoURL = null, photosShown = 0, start = null;

  // ------------------------------------------------------------------ the box, as the fields hold it
  function readBox() {
    var box = {}, key, value;
    for (key in fields) {
      value = fields[key] && fields[key].value.trim() !== "" ? Number(fields[key].value) : NaN;
      if (!isFinite(value)) return null;
      box[key] = value;
    }
    return box;
  }

  // Edges rounded to 1/10,000 of the photo and the sizes taken between the rounded edges, so that
  // x + width never passes 1 by a rounding error (the server would refuse the box).
  function edge(value) { return Math.round(Math.min(1, Math.max(0, value)) * 10000) / 10000; }

  function writeBox(box) {
    var key;
    if (!box) {
      for (key in fields) if (fields[key]) fields[key].value = "";
    } else {
      var left = edge(box.x), top = edge(box.y), right = edge(box.x + box.width), bottom = edge(box.y + box.height);
      fields.x.value = left.toFixed(4);
      fields.y.value = top.toFixed(4);
      fields.width.value = (right - left).toFixed(4);
      fields.height.value = (bottom - top).toFixed(4);
    }
    show(readBox());
  }

  function show(box) {
    if (!rect) return;
    if (!box || box.width <= 0 || box.height <= 0) {
      rect.hidden = true;
    } else {
      rect.hidden = false;
      rect.style.left = box.x * 100 + "%";
      rect.style.top = box.y * 100 + "%";
      rect.style.width = box.width * 100 + "%";
      rect.style.height = box.height * 100 + "%";
    }
    if (clear) clear.disabled = !readBox();
  }

  // ------------------------------------------------------------------ choosing a photo
  function chosen() {
    if (!input.files || !input.files.length) return;
    text.textContent = input.files[0].name;
    zone.classList.add("chosen");
    showPhoto(input.files[0]);
  }

  function showPhoto(file) {
    if (!stage || !window.PointerEvent || !window.URL || !URL.createObjectURL) return;
    if (photoURL) URL.revokeObjectURL(photoURL);
    // A box drawn on another photo means nothing on this one; a box typed (or kept from the last
    // search) before the first photo is shown on it.
    if (photosShown++ > 0) writeBox(null);
    photoURL = URL.createObjectURL(file);
    image.src = photoURL;
    stage.hidden = false;
    show(readBox());
  }

  // Shown at most 24rem wide and 20rem high, in the photo's own shape (the box's fractions are of
  // the image's box on screen, so it must not be stretched).
  if (image && canvas) image.addEventListener("load", function () {
    var rem = parseFloat(getComputedStyle(document.documentElement).fontSize) || 16,
        ratio = image.naturalWidth / Math.max(1, image.naturalHeight);
    canvas.style.width = Math.min(24 * rem, 20 * rem * ratio) + "px";
  });
  input.addEventListener("change", chosen);
  if (window.DataTransfer) {
    ["dragenter", "dragover"].forEach(function (e) {
      zone.addEventListener(e, function (ev) { ev.preventDefault(); zone.classList.add("over"); });
    });
    ["dragleave", "drop"].forEach(function (e) {
      zone.addEventListener(e, function (ev) { ev.preventDefault(); zone.classList.remove("over"); });
    });
    zone.addEventListener("drop", function (ev) {
      if (ev.dataTransfer.files.length) { input.files = ev.dataTransfer.files; chosen(); }
    });
  }
  if (!stage || !canvas || !image || !window.PointerEvent) return;

  // ------------------------------------------------------------------ drawing
  function at(ev) {
    var r = image.getBoundingClientRect();
    return {x: Math.min(1, Math.max(0, (ev.clientX - r.left) / r.width)),
            y: Math.min(1, Math.max(0, (ev.clientY - r.top) / r.height))};
  }

  function between(a, b) {
    return {x: Math.min(a.x, b.x), y: Math.min(a.y, b.y), width: Math.abs(a.x - b.x), height: Math.abs(a.y - b.y)};
  }

  canvas.addEventListener("pointerdown", function (ev) {
    if (ev.pointerType === "mouse" && ev.button !== 0) return;
    ev.preventDefault();  // no image drag, no text selection
    start = at(ev);
    canvas.setPointerCapture(ev.pointerId);
    canvas.classList.add("drawing");
  });
  canvas.addEventListener("pointermove", function (ev) {
    if (start) show(between(start, at(ev)));
  });
  function finish(ev, keep) {
    if (!start) return;
    var box = between(start, at(ev));
    start = null;
    canvas.classList.remove("drawing");
    // A click or a tap (a box under the smallest the server takes) keeps the box there was.
    if (keep && box.width >= minSide && box.height >= minSide) writeBox(box);
    else show(readBox());
  }
  canvas.addEventListener("pointerup", function (ev) { finish(ev, true); });
  canvas.addEventListener("pointercancel", function (ev) { finish(ev, false); });
  image.addEventListener("dragstart", function (ev) { ev.preventDefault(); });
  Object.keys(fields).forEach(function (key) {
    if (fields[key]) fields[key].addEventListener("input", function () { show(readBox()); });
  });
  if (clear) clear.addEventListener("click", function () { writeBox(null); });
})();
