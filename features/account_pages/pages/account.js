"use strict";
// The mailed token arrives in the address (?token=...). It is read once, then removed
// from the address bar and history; it is sent only to this service's own API.
const token = new URLSearchParams(window.location.search).get("token") || "";
window.history.replaceState(null, "", window.location.pathname);

const form = document.querySelector("form");
const status = document.getElementById("status");
const button = form.querySelector("button");

if (!token) {
  form.hidden = true;
  status.textContent = "This link is incomplete: open it again from the mail.";
}

form.addEventListener("submit", async (event) => {
  event.preventDefault();
  const body = { token };
  const password = form.elements.namedItem("new_password");
  if (password) {
    if (password.value !== form.elements.namedItem("again").value) {
      status.textContent = "The two passwords differ.";
      return;
    }
    body.new_password = password.value;
  }
  button.disabled = true;
  status.textContent = "";
  try {
    const response = await fetch(form.dataset.endpoint, {
      method: "POST",
      headers: { "Content-Type": "application/json" },
      body: JSON.stringify(body),
    });
    if (response.ok) {
      form.hidden = true;
      status.textContent = form.dataset.done;
      return;
    }
    const problem = await response.json().catch(() => ({}));
    const issues = (problem.errors || []).map((issue) => issue.msg).join("; ");
    status.textContent = issues || problem.detail || "Something went wrong; try again.";
  } catch {
    status.textContent = "The service could not be reached; try again.";
  }
  button.disabled = false;
});
